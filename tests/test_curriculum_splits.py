"""Tabletop generalization splits (env.split) and the difficulty curriculum (curriculum.*): the train split never
shows a held-out colour or paraphrase and the held-out split always does; set_difficulty reaches the envs
through vector envs and wrappers; the trainer promotes on evaluation success and resumes at its stage; bad
curriculum configs fail at launch, naming the problem."""

import json
import re

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from envs import make_vector_env
from envs.tabletop import TASKS, TabletopEnv
from envs.tabletop.scene import COLOUR_NAMES, HELDOUT_COLOURS
from tests.conftest import train_config
from vla.curriculum import Curriculum
from vla.demos import read_dataset, record_demos
from vla.errors import ConfigError
from vla.trainer import Trainer

HELDOUT_INDICES = {COLOUR_NAMES.index(name) for name in HELDOUT_COLOURS}
SEEDS = range(150)


def template_pattern(templates):
    """A regex matching instructions made from any of ``templates``."""
    alternatives = [re.escape(t).replace(r"\{object\}", "[a-z]+ [a-z]+").replace(r"\{zone\}", "[a-z]+")
                    for t in templates]
    return re.compile("^(" + "|".join(alternatives) + ")$")


@pytest.mark.parametrize("task", sorted(TASKS))
def test_train_split_never_shows_heldout_colours_or_paraphrases_and_heldout_split_always_does(task):
    heldout_templates = template_pattern(TASKS[task].heldout_paraphrases)
    train_templates = template_pattern(TASKS[task].paraphrases)
    train = TabletopEnv(task, use_camera=False, num_objects=4, split="train")
    heldout = TabletopEnv(task, use_camera=False, num_objects=4, split="heldout")
    for seed in SEEDS:
        obs, _ = train.reset(seed=seed)
        state = train.get_task_state()
        assert not HELDOUT_INDICES & set(state["colours"] + state["zone_colours"]), (seed, state)
        assert not any(name in obs["instruction"] for name in HELDOUT_COLOURS), obs["instruction"]
        assert train_templates.match(obs["instruction"]), obs["instruction"]

        obs, _ = heldout.reset(seed=seed)
        state = heldout.get_task_state()
        named = state["colours"][state["target"]]
        assert named in HELDOUT_INDICES and f"{COLOUR_NAMES[named]} " in obs["instruction"], (seed, state)
        assert len(set(state["colours"])) == 4  # still one object per colour: the instruction is unambiguous
        assert heldout_templates.match(obs["instruction"]), obs["instruction"]
    # The default split ("all", as before splits existed) mixes both.
    every = TabletopEnv(task, use_camera=False, num_objects=4)
    instructions = [every.reset(seed=seed)[0]["instruction"] for seed in SEEDS]
    assert any(heldout_templates.match(text) for text in instructions)
    assert any(train_templates.match(text) for text in instructions)
    for env in (train, heldout, every):
        env.close()


def test_train_split_has_room_for_four_objects_only():
    with pytest.raises(ConfigError, match=r"env.num_objects=5 must be between 1 and 4 with env.split=train"):
        TabletopEnv("reach", use_camera=False, num_objects=5, split="train")
    with pytest.raises(ConfigError, match=r"env.split='test' is not supported"):
        TabletopEnv("reach", use_camera=False, split="test")


def test_inactive_objects_are_out_of_play_and_the_scene_matches_a_smaller_model():
    big = TabletopEnv("push", num_objects=2, max_objects=4, cameras=["front"])
    small = TabletopEnv("push", num_objects=2, cameras=["front"])
    for seed in range(5):
        big_obs, _ = big.reset(seed=seed)
        small_obs, _ = small.reset(seed=seed)
        assert big_obs["instruction"] == small_obs["instruction"]
        assert np.array_equal(big_obs["image"], small_obs["image"])  # the parked objects are invisible
    for index in (2, 3):
        geom = big._object_geoms[index]
        assert big.model.geom_rgba[geom, 3] == 0 and big.model.geom_contype[geom] == 0
        assert big.model.geom_conaffinity[geom] == 0
    parked = big.data.qpos[big._object_qpos[3]:big._object_qpos[3] + 3].copy()
    for _ in range(20):
        big.step(big.action_space.sample())
    np.testing.assert_allclose(big.data.qpos[big._object_qpos[3]:big._object_qpos[3] + 3], parked, atol=1e-9)
    with pytest.raises(ConfigError, match=r"env.num_objects=5 must be between 1 and 4"):
        big.set_difficulty(num_objects=5)
    big.close()
    small.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_set_difficulty_reaches_every_env_through_the_vector_env_and_wrappers(mode):
    env_cfg = train_config("env=tabletop_reach_state", f"env.vector_mode={mode}", "env.max_objects=4",
                           "env.num_objects=1", "env.placement_range=0.05").env
    envs = make_vector_env(env_cfg, 2)
    try:
        def observe():
            targets, counts = [], set()
            for seed in range(0, 40, 2):
                obs, _ = envs.reset(seed=seed)
                targets.append(obs["state"][:, 7:9])  # privileged state: the named object's position
                counts |= {len(state["colours"]) for state in envs.call("get_task_state")}
            return np.abs(np.concatenate(targets)).max(), counts

        reach, counts = observe()
        assert reach <= 0.05 and counts == {1}
        envs.call("set_difficulty", placement_range=0.3, num_objects=4)
        assert envs.get_attr("num_objects") == (4, 4)
        reach, counts = observe()
        assert 0.1 < reach <= 0.3 and counts == {4}
    finally:
        envs.close()


CURRICULUM_RUN = [
    "env=tabletop_reach_state", "env.vector_mode=sync", "env.split=train", "num_envs=2", "algo.num_steps=16",
    "algo.num_minibatches=2", "algo.update_epochs=1", "total_env_steps=64", "progress=false", "torch_threads=1",
    "checkpoint.every_updates=1", "eval.every_updates=1", "eval.episodes=2", "eval.at_end=false",
    "eval.heldout=true", "curriculum=tabletop_widen", "curriculum.promote_at=0.0",
]


def test_trainer_promotes_on_eval_success_logs_the_stage_and_resumes_at_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    trainer = Trainer(train_config(*CURRICULUM_RUN), run_dir)
    assert trainer.rollouts.envs.get_attr("num_objects") == (1, 1)  # stage 0
    history = trainer.train()
    # 2 updates; the evaluation after update 1 (success rate >= 0.0) promotes to stage 1.
    assert [m["curriculum/stage"] for m in history] == [0.0, 1.0]
    assert "promoted to stage 1 (stages 0-3): placement_range 0.12, num_objects 2" in capsys.readouterr().out
    state = json.loads((run_dir / "checkpoints" / "update_000002" / "state.json").read_text())
    assert state["curriculum"] == {"stage": 1, "evals_at_stage": 0, "max_objects": 4}
    report = json.loads((run_dir / "eval" / "update_000001" / "report.json").read_text())
    assert report["checkpoint"]["curriculum"] == {"stage": 0, "placement_range": 0.1, "num_objects": 1}
    # The held-out split, reported separately on the same seeds.
    assert report["split"] == "train" and report["heldout"]["split"] == "heldout"
    assert [r["seed"] for r in report["heldout"]["episode_rows"]] == [r["seed"] for r in report["episode_rows"]]
    heldout_templates = template_pattern(TASKS["reach"].heldout_paraphrases)
    assert all(heldout_templates.match(r["instruction"]) for r in report["heldout"]["episode_rows"])
    assert not any(heldout_templates.match(r["instruction"]) for r in report["episode_rows"])
    assert "## Held-out split" in (run_dir / "eval" / "update_000001" / "report.md").read_text()
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert {"curriculum/stage", "eval/success_rate", "eval_heldout/success_rate"} <= set(events.Tags()["scalars"])

    with pytest.raises(ConfigError, match="from a run with a curriculum; resume with the same curriculum"):
        Trainer(train_config(*CURRICULUM_RUN, "curriculum.enabled=false", f"resume={run_dir}"), tmp_path / "x")
    with pytest.raises(ConfigError, match="at curriculum stage 1 with models of 4 objects, but curriculum.stages"):
        Trainer(train_config(*CURRICULUM_RUN, "curriculum.stages=[{num_objects:1}]", f"resume={run_dir}"),
                tmp_path / "x")
    resumed = Trainer(train_config(*CURRICULUM_RUN, "total_env_steps=128", f"resume={run_dir}"), tmp_path / "x")
    assert resumed.curriculum.stage == 1 and resumed.rollouts.envs.get_attr("num_objects") == (2, 2)
    history = resumed.train()
    assert [m["curriculum/stage"] for m in history] == [1.0, 2.0]  # update 3's evaluation promoted again
    state = json.loads((run_dir / "checkpoints" / "update_000004" / "state.json").read_text())
    assert state["curriculum"]["stage"] == 2


@pytest.mark.parametrize("overrides, message", [
    (["env=reacher", "curriculum.enabled=true"], "needs an env whose difficulty can change"),
    (["curriculum.enabled=true"], "curriculum.stages is empty"),
    (["curriculum=tabletop_widen", "curriculum.promote_at=1.5"], r"promote_at=1.5 is an evaluation success rate"),
    (["curriculum=tabletop_widen", "eval.every_updates=0"], "advances on the periodic evaluation, which is off"),
    (["curriculum=tabletop_widen", "curriculum.stages=[{placement_range:0.04,num_objects:4}]"],
     r"curriculum.stages\[0\] \(placement_range=0.04, num_objects=4\) cannot be used: could not place"),
    (["curriculum=tabletop_widen", "env.split=train", "curriculum.stages=[{num_objects:5}]"],
     r"curriculum.stages\[0\] .* env.max_objects=5 must be between 1 and 4 with env.split=train"),
    (["curriculum=tabletop_widen", "curriculum.stages=[{placement_range:0.9}]"],
     r"curriculum.stages\[0\] .* env.placement_range=0.9 must lie in"),
    (["env=reacher", "eval.heldout=true"], "held-out evaluation needs an env with generalization splits"),
    (["env=robosuite_door", "eval.heldout=true"], "robosuite Lift\\); env 'Door' has none"),
])
def test_bad_curriculum_or_split_config_fails_at_launch_naming_the_problem(tmp_path, overrides, message):
    env = [] if any(o.startswith("env=") for o in overrides) else ["env=tabletop_reach_state"]
    with pytest.raises(ConfigError, match=message):
        Trainer(train_config(*env, "eval.every_updates=1", "progress=false", *overrides), tmp_path)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_shipped_curriculum_fits_every_task_and_the_train_split(task):
    curriculum = Curriculum(train_config(f"env=tabletop_{task}", "env.split=train", "curriculum=tabletop_widen",
                                         "eval.every_updates=1"))
    assert curriculum.max_objects == 4 and curriculum.env_config(3).placement_range == 0.2


def test_demos_record_the_train_split_and_say_so(tmp_path):
    from tests.test_demos import demos_config

    cfg = demos_config("env=tabletop_reach", "env.use_camera=false", "env.split=train", "progress=false",
                       "episodes=3", "valid_fraction=0")
    path = tmp_path / "train.hdf5"
    record_demos(cfg, path)
    dataset = read_dataset(path)
    assert dataset.env_args["split"] == "train"
    heldout_templates = template_pattern(TASKS["reach"].heldout_paraphrases)
    for demo in dataset.demos.values():
        assert not heldout_templates.match(demo.instruction)
        assert not any(name in demo.instruction for name in HELDOUT_COLOURS)
