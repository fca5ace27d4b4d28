"""Demonstrations: ``vla-demos`` writes robomimic's HDF5 layout, the file reads back as written, and the stored
actions replayed from the stored seeds give the same episodes. The scripted robosuite Door expert opens the door."""

import json

import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from envs import make_env
from envs.robosuite_env import TASK_INSTRUCTIONS
from tests.conftest import REPO, run_cli
from vla.demos import read_dataset, record_demos, stored_keys
from vla.errors import ConfigError, UserError

PUSH = ["env=tabletop_push", "progress=false"]


def demos_config(*overrides: str):
    """The composed ``vla-demos`` config, as hydra builds it from the command line."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("demos", overrides=list(overrides))


def test_demos_command_writes_robomimic_layout_that_reads_back_and_replays_exactly(tmp_path):
    path = tmp_path / "push.hdf5"
    result = run_cli("vla-demos", *PUSH, "episodes=3", "seed=5", "valid_fraction=0.34", f"output={path}",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote 3 demonstrations" in result.stdout and not list(tmp_path.glob(".push.hdf5.tmp-*"))

    cfg = demos_config(*PUSH)
    with h5py.File(path, "r") as f:  # the layout robomimic reads
        data = f["data"]
        assert json.loads(data.attrs["env_args"])["task"] == "push"
        assert sorted(data) == ["demo_0", "demo_1", "demo_2"]
        assert data.attrs["total"] == sum(data[name].attrs["num_samples"] for name in data)
        assert sorted(n.decode() for n in [*f["mask/train"][()], *f["mask/valid"][()]]) == sorted(data)
        assert len(f["mask/valid"]) == 1
        demo = data["demo_0"]
        assert set(demo["obs"]) == {"state", "image"}
        assert demo["obs/image"].dtype == np.uint8 and demo["obs/image"].shape[1:] == (64, 64, 3)
        assert demo["obs/state"].dtype == np.float32 and demo["actions"].dtype == np.float32
        assert list(demo["dones"][()]) == [0] * (demo.attrs["num_samples"] - 1) + [1]

    dataset = read_dataset(path)
    # Three envs side by side finish episodes out of order; the demos still come out in seed order, the same.
    parallel = read_dataset(record_demos(demos_config(*PUSH, "episodes=3", "seed=5", "valid_fraction=0.34",
                                                      "num_envs=3", "env.vector_mode=async"),
                                         tmp_path / "parallel.hdf5")["path"])
    assert list(parallel.demos) == list(dataset.demos) and parallel.valid == dataset.valid
    env = make_env(cfg.env, expert=True)
    try:
        keys = stored_keys(env.observation_space, None)
        for name, demo in dataset.demos.items():
            assert demo.seed == 5 + int(name.split("_")[1])  # every attempt succeeded: seeds are consecutive
            assert demo.executed_actions is None and np.abs(demo.actions).max() <= 1.0
            for field in ("actions", "rewards", "dones"):
                np.testing.assert_array_equal(getattr(demo, field), getattr(parallel.demos[name], field))
            for key in keys:
                np.testing.assert_array_equal(demo.obs[key], parallel.demos[name].obs[key], err_msg=key)

            # The stored actions are the expert's in each state and, replayed from the stored seed, reproduce
            # observations, rewards and success.
            obs, _ = env.reset(seed=demo.seed)
            assert obs["instruction"] == demo.instruction
            for t, action in enumerate(demo.actions):
                np.testing.assert_array_equal(obs["image"], demo.obs["image"][t])
                np.testing.assert_array_equal(env.get_wrapper_attr("expert_action")(), action)
                obs, reward, terminated, truncated, info = env.step(action)
                assert reward == demo.rewards[t] and (terminated or truncated) == bool(demo.dones[t])
            assert info["success"] and demo.success
    finally:
        env.close()


def test_failed_episodes_are_dropped_or_kept_and_image_keys_select_cameras(tmp_path):
    too_short = ["env.max_episode_steps=3", "env=tabletop_reach"]
    with pytest.raises(UserError, match="succeeded in none of 2 attempts"):
        record_demos(demos_config(*too_short, "max_attempts=2", "progress=false"), tmp_path / "none.hdf5")
    assert not list(tmp_path.iterdir())  # nothing written, no temporary file left

    record_demos(demos_config(*too_short, "episodes=2", "only_successful=false", "image_keys=[]",
                              "valid_fraction=0", "progress=false"), tmp_path / "failed.hdf5")
    dataset = read_dataset(tmp_path / "failed.hdf5")
    assert [demo.success for demo in dataset.demos.values()] == [False, False]
    assert all(set(demo.obs) == {"state"} and demo.num_samples == 3 for demo in dataset.demos.values())
    assert dataset.train == ["demo_0", "demo_1"] and dataset.valid == []

    # The scripted expert knocks the object off the table from this seed: beyond recovery, the episode ends
    # at that step (failed) rather than running on to the time limit with no right action to show.
    record_demos(demos_config("env=tabletop_push", "env.use_camera=false", "env.privileged_obs=true",
                              "seed=100000", "only_successful=false", "episodes=1", "valid_fraction=0",
                              "progress=false"), tmp_path / "off.hdf5")
    (demo,) = read_dataset(tmp_path / "off.hdf5").demos.values()
    assert not demo.success and demo.num_samples < 150 and demo.dones[-1] == 1 and demo.dones[:-1].sum() == 0
    assert demo.obs["privileged"][:, 2].min() > -0.01  # every stored state still had the object on the table

    with pytest.raises(ConfigError, match="image_keys \\['wrist_image'\\]"):
        record_demos(demos_config("env=tabletop_reach", "image_keys=[wrist_image]"), tmp_path / "x.hdf5")


def test_action_noise_runs_perturbed_actions_and_labels_each_state_with_the_clean_expert_action(tmp_path):
    """DART: with action_noise the noisy actions run (kept as executed_actions) and every stored label is the
    expert's clean action for the state that was reached; replaying the executed actions from the stored seed
    reproduces the episode."""
    state_push = [*PUSH, "env.use_camera=false", "progress=false"]
    path = record_demos(demos_config(*state_push, "episodes=2", "seed=7", "action_noise=0.2", "valid_fraction=0"),
                        tmp_path / "noisy.hdf5")["path"]
    with h5py.File(path, "r") as f:
        assert f["data"].attrs["action_noise"] == pytest.approx(0.2)
    dataset = read_dataset(path)
    env = make_env(demos_config(*state_push).env, expert=True)
    try:
        for demo in dataset.demos.values():
            noise = demo.executed_actions - demo.actions
            inside = np.abs(demo.executed_actions) < 1.0  # not clipped at the action bound
            assert 0.15 < noise[inside].std() < 0.25 and np.abs(demo.executed_actions).max() <= 1.0
            obs, _ = env.reset(seed=demo.seed)
            for t, executed in enumerate(demo.executed_actions):
                np.testing.assert_array_equal(obs["state"], demo.obs["state"][t])
                np.testing.assert_array_equal(env.get_wrapper_attr("expert_action")(), demo.actions[t])
                obs, reward, terminated, truncated, info = env.step(executed)
                assert reward == demo.rewards[t]
            assert info["success"] and demo.success
    finally:
        env.close()
    with pytest.raises(ConfigError, match="action_noise=-0.1"):
        record_demos(demos_config(*state_push, "action_noise=-0.1"), tmp_path / "x.hdf5")


def test_env_without_an_expert_and_a_missing_dataset_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="'Reacher-v5' has no scripted expert"):
        record_demos(demos_config("env=reacher"), tmp_path / "reacher.hdf5")
    with pytest.raises(UserError, match="does not exist; record one with vla-demos"):
        read_dataset(tmp_path / "nope.hdf5")


def test_scripted_robosuite_door_expert_records_a_successful_demo(tmp_path):
    path = tmp_path / "door.hdf5"
    summary = record_demos(demos_config("env=robosuite_door", "env.use_camera=false", "episodes=1",
                                        "progress=false"), path)
    assert summary["demos"] == summary["attempts"] == 1
    (demo,) = read_dataset(path).demos.values()
    assert demo.success and demo.instruction in TASK_INSTRUCTIONS["Door"] and demo.actions.shape[1] == 7
    assert demo.num_samples < 300  # it succeeded (and terminated) before the horizon


def test_unlabelled_scene_views_run_random_actions_and_keep_every_episode(tmp_path):
    """vla-demos unlabelled=true: uniform random actions from each seed's reset, every episode kept whatever
    happened, marked labelled=false; the observations (privileged positions included) replay from the seed."""
    scenes = [*PUSH, "env.use_camera=false", "env.privileged_obs=true", "env.max_episode_steps=5"]
    summary = record_demos(demos_config(*scenes, "unlabelled=true", "episodes=4", "num_envs=2", "seed=11",
                                        "valid_fraction=0.25"), tmp_path / "scenes.hdf5")
    assert summary["demos"] == 4 and summary["attempts"] == 4 and summary["samples"] == 20
    with h5py.File(summary["path"], "r") as f:
        assert f["data"].attrs["unlabelled"] and not f["data/demo_0"].attrs["labelled"]
    dataset = read_dataset(summary["path"])
    assert len(dataset.valid) == 1
    env = make_env(demos_config(*scenes).env)
    try:
        for k, demo in enumerate(dataset.demos.values()):
            assert not demo.labelled and demo.seed == 11 + k and demo.executed_actions is None
            assert demo.actions.shape == (5, 4) and np.abs(demo.actions).max() <= 1.0 and demo.actions.std() > 0.3
            obs, _ = env.reset(seed=demo.seed)
            for t, action in enumerate(demo.actions):
                np.testing.assert_array_equal(obs["privileged"], demo.obs["privileged"][t])
                obs, *_ = env.step(action)
    finally:
        env.close()
    labelled = read_dataset(record_demos(demos_config(*scenes, "episodes=1", "env.max_episode_steps=150"),
                                         tmp_path / "demos.hdf5")["path"])
    assert all(demo.labelled for demo in labelled.demos.values())
    with pytest.raises(ConfigError, match="neither checkpoint= nor action_noise"):
        record_demos(demos_config(*scenes, "unlabelled=true", "action_noise=0.1"), tmp_path / "x.hdf5")
