"""The robosuite wrapper: env contract, horizon as truncation, reachable success, seeding, exact resume.

Creating a robosuite env takes seconds, so the default suite builds two (Lift with a camera, Lift from state)
and shares each across its tests; the other tasks' scripted successes and the vector env are marked slow.
"""

import json

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from envs import make_env, make_vector_env
from envs.robosuite_env import HELDOUT_CUBE_HALF_SIZE, HELDOUT_INSTRUCTIONS, TASK_INSTRUCTIONS
from envs.robosuite_experts import make_expert
from tests.conftest import load_experiment, train_config
from vla.errors import ConfigError


def env_config(preset: str, *overrides: str):
    """The shipped preset ``conf/env/robosuite_<preset>.yaml``, composed as ``vla-train env=...`` would."""
    return train_config(f"env=robosuite_{preset}", *[f"env.{o}" for o in overrides]).env


def run_expert(env, expert, max_steps: int):
    """Steps the expert until the episode ends; returns (terminated, truncated, info, steps)."""
    for step in range(1, max_steps + 1):
        _, _, terminated, truncated, info = env.step(expert.act(env.unwrapped._env))
        if terminated or truncated:
            return terminated, truncated, info, step
    return False, False, info, max_steps


# --------------------------------------------------------------------------------- Lift with a camera
@pytest.fixture(scope="module")
def camera_env():
    env = make_env(env_config("lift", "horizon=40", "instruction_mode=fixed", "privileged_obs=true"),
                   render_mode="rgb_array")
    yield env
    env.close()


def test_gymnasium_check_env_passes(camera_env):
    check_env(camera_env, skip_render_check=True)


def test_observations_follow_the_env_contract_with_upright_images(camera_env):
    obs, info = camera_env.reset(seed=0)
    assert set(obs) == {"state", "image", "instruction", "privileged"}
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (50,)  # proprio only: no object state
    # The object state, for the critic only: cube position (on the table, about 0.83 m up), quaternion, and
    # its offset from the gripper.
    privileged = obs["privileged"]
    assert privileged.dtype == np.float32 and privileged.shape == (10,)
    assert 0.8 < privileged[2] < 0.86 and np.linalg.norm(privileged[3:7]) == pytest.approx(1.0, abs=1e-4)
    image = obs["image"]
    assert image.dtype == np.uint8 and image.shape == (84, 84, 3)
    # agentview looks at the white table from the front, the robot behind it: the table fills the bottom
    # of an upright image, the robot and the wall the top (robosuite's raw offscreen frames are upside down).
    assert image[-20:].mean() > image[:20].mean() + 40
    assert obs["instruction"] == TASK_INSTRUCTIONS["Lift"][0]
    assert info == {"success": False, "task": "robosuite/Lift"}
    frame = camera_env.render()
    assert frame.shape == (256, 256, 3) and frame[-40:].mean() < frame[:40].mean() + 60  # a frame, sane


def test_horizon_is_truncation_not_termination(camera_env):
    camera_env.reset(seed=1)
    idle = np.zeros(camera_env.action_space.shape, dtype=np.float32)
    for step in range(1, 41):
        _, _, terminated, truncated, info = camera_env.step(idle)
        assert not terminated and not info["success"]
        assert truncated == (step == 40)


def test_release_build_memory_empties_mujoco_asset_cache_and_the_env_still_steps(camera_env):
    import mujoco

    from envs.registry import release_build_memory

    cache = mujoco.mj_getCache()
    assert mujoco.mj_getCacheSize(cache) > 0  # robosuite's meshes and textures, decoded when the env was built
    release_build_memory()  # what each vector-env worker does after building its env
    assert mujoco.mj_getCacheSize(cache) == 0
    first, _ = camera_env.reset(seed=3)
    obs, _, _, _, _ = camera_env.step(np.zeros(camera_env.action_space.shape, dtype=np.float32))
    assert obs["image"].shape == first["image"].shape and np.isfinite(obs["state"]).all()


def test_seeded_resets_repeat_and_snapshot_restore_repeats_the_next_steps(camera_env):
    cube = camera_env.unwrapped._env.cube
    first, _ = camera_env.reset(seed=5)
    first_size = cube.size.copy()
    other, _ = camera_env.reset(seed=6)
    assert not np.array_equal(cube.size, first_size)  # the cube's size is drawn per episode
    again, _ = camera_env.reset(seed=5)
    np.testing.assert_array_equal(cube.size, first_size)
    np.testing.assert_array_equal(first["state"], again["state"])
    np.testing.assert_array_equal(first["image"], again["image"])
    assert not np.array_equal(first["state"], other["state"])

    actions = np.random.default_rng(0).uniform(-1, 1, size=(10, 7)).astype(np.float32)
    for action in actions[:4]:
        camera_env.step(action)
    snapshot = json.loads(json.dumps(camera_env.get_snapshot()))
    expected = [camera_env.step(action) for action in actions[4:]]
    camera_env.reset(seed=7)
    camera_env.restore_snapshot([snapshot])
    for action, (obs, reward, terminated, truncated, info) in zip(actions[4:], expected):
        got_obs, got_reward, got_terminated, got_truncated, got_info = camera_env.step(action)
        np.testing.assert_array_equal(got_obs["state"], obs["state"])
        np.testing.assert_array_equal(got_obs["image"], obs["image"])
        assert (got_reward, got_terminated, got_truncated, got_info) == (reward, terminated, truncated, info)


# ------------------------------------------------------------------------------------ Lift from state
def test_scripted_lift_succeeds_and_terminates_on_success():
    env = make_env(env_config("lift_state"))
    try:
        assert "image" not in env.observation_space.spaces
        env.reset(seed=0)
        expert = make_expert("Lift")
        terminated, truncated, info, steps = run_expert(env, expert, 200)
        assert info["success"] and terminated and not truncated, (steps, expert.stage)
    finally:
        env.close()


def cube_half_sizes(env, seeds):
    """The cube's half-sides (x, y, z) after a reset on each seed, as the model holds them."""
    sizes = []
    for seed in seeds:
        env.reset(seed=seed)
        sizes.append(env.unwrapped.model.geom("cube_g0").size.copy())
    return np.array(sizes)


def test_lift_cube_size_is_a_function_of_the_seed_and_the_heldout_cube_is_smaller_and_liftable():
    envs = {name: make_env(env_config("lift_state", f"split={split}"))
            for name, split in (("all", "all"), ("all_again", "all"), ("heldout", "heldout"))}
    try:
        sizes = {name: cube_half_sizes(env, range(5)) for name, env in envs.items()}
        # Two env processes give the same cube for the same seed (robosuite alone draws one per process).
        np.testing.assert_array_equal(sizes["all"], sizes["all_again"])
        assert len(np.unique(sizes["all"])) == sizes["all"].size  # and another one per episode
        assert ((0.020 <= sizes["all"]) & (sizes["all"] <= 0.022)).all()
        low, high = HELDOUT_CUBE_HALF_SIZE
        assert ((low <= sizes["heldout"]) & (sizes["heldout"] <= high)).all() and high < 0.020

        heldout = envs["heldout"]
        instructions = {heldout.reset(seed=seed)[0]["instruction"] for seed in range(6)}
        assert instructions == set(HELDOUT_INSTRUCTIONS["Lift"])
        heldout.reset(seed=0)
        expert = make_expert("Lift")
        terminated, _, info, steps = run_expert(heldout, expert, 200)
        assert info["success"] and terminated, (steps, expert.stage)
        assert {envs["all"].reset(seed=seed)[0]["instruction"] for seed in range(6)} <= set(TASK_INSTRUCTIONS["Lift"])
    finally:
        for env in envs.values():
            env.close()


def numeric_model_fields(model):
    fields = {}
    for name in dir(model):
        value = getattr(model, name, None) if not name.startswith("_") else None
        if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
            fields[name] = value.copy()
    return fields


def test_resized_cube_model_equals_the_model_robosuite_builds_for_that_size():
    # robosuite draws each env's cube when it builds the model (from an unseeded generator): two builds, two
    # sizes. Resizing the second to the first's size must leave no trace of its own: geoms, bounding volumes,
    # mass, inertia and what MuJoCo derives from them (contact softness comes from the inverse weights).
    built, resized = make_env(env_config("lift_state")), make_env(env_config("lift_state"))
    try:
        size = np.array(built.unwrapped._env.cube.size)
        assert not np.array_equal(size, resized.unwrapped._env.cube.size)
        before = numeric_model_fields(resized.unwrapped.model)
        resized.unwrapped._set_cube_half_size(size)
        expected, actual = numeric_model_fields(built.unwrapped.model), numeric_model_fields(resized.unwrapped.model)
        changed = [name for name in actual if not np.array_equal(actual[name], before[name])]
        assert {"geom_size", "body_mass", "body_inertia", "body_invweight0", "dof_M0", "bvh_aabb"} <= set(changed)
        for name in expected:
            np.testing.assert_allclose(actual[name], expected[name], rtol=1e-12, atol=1e-15, err_msg=name)
    finally:
        built.close()
        resized.close()


def test_bad_config_values_raise_config_errors_naming_them():
    with pytest.raises(ConfigError, match="env.task='Fly'"):
        make_env(env_config("lift_state", "task=Fly"))
    with pytest.raises(ConfigError, match="env.controller='OSC'"):
        make_env(env_config("lift_state", "controller=OSC"))
    with pytest.raises(ConfigError, match="env.robot='R2D2'"):
        make_env(env_config("lift_state", "robot=R2D2"))
    with pytest.raises(ConfigError, match="env.split=heldout is defined for robosuite"):
        make_env(env_config("lift_state", "task=Door", "split=heldout"))


# ------------------------------------------------------------------------------- slow: every other task
ALL_PRESETS = ["lift", "stack", "door", "pick_place_can", "nut_assembly_round", "wipe"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_every_task_preset_passes_check_env_with_its_camera(preset):
    env = make_env(env_config(preset, "horizon=40"))
    try:
        check_env(env, skip_render_check=True)
        obs, info = env.reset(seed=0)
        assert obs["image"].shape == (84, 84, 3) and obs["instruction"] in TASK_INSTRUCTIONS[env.unwrapped.task]
        assert info["task"] == f"robosuite/{env.unwrapped.task}"
    finally:
        env.close()


PICK_AND_PLACE_TASKS = {"stack": "Stack", "pick_place_can": "PickPlaceCan", "nut_assembly_round": "NutAssemblyRound"}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PICK_AND_PLACE_TASKS))
def test_scripted_pick_and_place_succeeds(preset):
    # The expert is simple (it drops the nut or misses the bin in about one episode in three); seed 0 works.
    env = make_env(env_config(preset, "use_camera=false"))
    try:
        env.reset(seed=0)
        expert = make_expert(PICK_AND_PLACE_TASKS[preset])
        terminated, truncated, info, steps = run_expert(env, expert, 400)
        assert info["success"] and terminated and not truncated, (steps, expert.stage)
    finally:
        env.close()


@pytest.mark.slow
def test_door_opens_only_after_its_latch_is_turned():
    """Privileged: joint torques stand in for the arm. A latched door stays shut; turning the handle opens it."""
    env = make_env(env_config("door", "use_camera=false"))
    try:
        for turn_handle in (False, True):
            env.reset(seed=0)
            suite, data = env.unwrapped._env, env.unwrapped.data
            dof = {joint: suite.sim.model._model.jnt_dofadr[suite.sim.model.joint_name2id(joint)]
                   for joint in suite.door.joints}
            hinge, latch = suite.door.joints
            data.qfrc_applied[:] = 0.0
            data.qfrc_applied[dof[hinge]] = 5.0
            data.qfrc_applied[dof[latch]] = 5.0 if turn_handle else 0.0
            for _ in range(60):
                _, _, terminated, truncated, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
                if terminated:
                    break
            assert info["success"] == terminated == turn_handle
            data.qfrc_applied[:] = 0.0
    finally:
        env.close()


@pytest.mark.slow
def test_wipe_terminates_when_the_arm_presses_into_the_table():
    env = make_env(env_config("wipe", "use_camera=false"))
    try:
        env.reset(seed=0)
        press_down = np.array([0, 0, -1, 0, 0, 0], dtype=np.float32)
        for _ in range(60):
            _, _, terminated, truncated, info = env.step(press_down)
            if terminated or truncated:
                break
        assert terminated and not truncated and not info["success"]
        assert env.get_snapshot() is None  # Wipe's marker state cannot be captured: resume restarts it
    finally:
        env.close()


@pytest.mark.slow
def test_async_vector_env_with_two_forkserver_camera_workers():
    envs = make_vector_env(env_config("lift", "vector_mode=async"), num_envs=2)
    try:
        obs, _ = envs.reset(seed=[0, 1])
        assert obs["image"].shape == (2, 84, 84, 3)
        for _ in range(3):
            obs, reward, terminated, truncated, info = envs.step(np.zeros((2, 7), dtype=np.float32))
        assert reward.shape == (2,) and not truncated.any() and list(info["task"]) == ["robosuite/Lift"] * 2
    finally:
        envs.close()


class ScriptedLiftThen:
    """Stands in for a policy in ``experiments/probe_lift.py``: robosuite's scripted Lift expert until the cube
    has been up for ``held`` steps, then ``after`` (a fixed action) to the end."""

    def __init__(self, env, after, held: int = 5):
        self.env, self.after, self.held = env, np.asarray(after, dtype=np.float32), held
        self.expert, self.up_steps = make_expert("Lift"), 0

    def to_tensors(self, obs):
        return obs

    def act(self, obs, deterministic: bool):
        suite = self.env.unwrapped._env
        self.up_steps += bool(suite._check_success())
        action = self.after if self.up_steps > self.held else self.expert.act(suite)
        return type("Out", (), {"action": torch.as_tensor(action, dtype=torch.float32)[None]})


@pytest.mark.parametrize("after, how", [([0, 0, -1, 0, 0, 0, 1], "lowered"), ([0, 0, 0, 0, 0, 0, -1], "dropped")])
def test_probe_lift_tells_a_lowered_cube_from_a_dropped_one(after, how):
    # The arm moving down with the gripper closed brings the held cube back below 4 cm: lowered. An opening
    # gripper lets it fall: dropped.
    probe_lift = load_experiment("probe_lift")
    env = make_env(env_config("lift_state", "terminate_on_success=false", "horizon=80"))
    try:
        row = probe_lift.probe_episode(ScriptedLiftThen(env, after), env, seed=0)
    finally:
        env.close()
    assert row["lifted"] and not row["success"] and row["first_lift"] is not None
    # The expert closes its fingers on the cube before it rises: the probe sees the grasp first.
    assert row["first_grasp"] is not None and row["first_grasp"] < row["first_lift"]
    assert [loss for _, loss in row["losses"]] == [how], row
    assert row["max_height"] > 0.04
