"""The native tabletop tasks: env contract, reachable success, seeding, exact resume, vector envs."""

import json

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from envs import make_env, make_vector_env
from envs.tabletop import TASKS, TabletopEnv
from envs.tabletop.expert import scripted_action
from envs.tabletop.scene import (
    COLOUR_NAMES, COLOURS, FLOOR_HEIGHT, HAND_RANGE, OBJECT_HALF_SIZE, SHAPE_NOUNS, SHAPES, TABLE_HALF_SIZE,
    TOP_CAMERA_FOVY, TOP_CAMERA_HEIGHT,
)
from envs.tabletop.tasks import (
    PUSH_APPROACH_OFFSET, PUSH_CONTACT_OFFSET, PUSH_OFF_TABLE_COST, SUCCESS_BONUS, TaskMeasures,
)
from tests.conftest import train_config
from vla.errors import ConfigError

TASK_NAMES = sorted(TASKS)


def env_config(task: str, *overrides: str):
    """The shipped preset ``conf/env/tabletop_<task>.yaml``, composed as ``vla-train env=...`` would."""
    return train_config(f"env=tabletop_{task}", *[f"env.{o}" for o in overrides]).env


def normalized(env, natural_action: np.ndarray) -> np.ndarray:
    """A natural-units action (what the scripted expert gives) in the [-1, 1] units make_env's env takes."""
    space = env.unwrapped.action_space
    return 2.0 * (natural_action - space.low) / (space.high - space.low) - 1.0


def run_expert(env, seed: int):
    """One scripted episode on a make_env env; returns the last step's (terminated, truncated, info, steps)."""
    env.reset(seed=seed)
    steps = 0
    while True:
        _, _, terminated, truncated, info = env.step(normalized(env, scripted_action(env.unwrapped)))
        steps += 1
        if terminated or truncated:
            return terminated, truncated, info, steps


@pytest.mark.parametrize("task", TASK_NAMES)
def test_gymnasium_check_env_passes(task):
    env = TabletopEnv(task, cameras=["front", "wrist", "top"])
    check_env(env, skip_render_check=True)
    env.close()


def test_top_camera_looks_straight_down_on_the_objects():
    # A pinhole camera at TOP_CAMERA_HEIGHT over the table's centre, image up = world +y: hiding an object
    # changes the pixel its centre projects onto.
    env = TabletopEnv("push", cameras=["top"])
    size = env.image_size
    focal = size / 2 / np.tan(np.radians(TOP_CAMERA_FOVY) / 2)

    def render():
        return env._observation()["image"].astype(np.int32)

    for seed in range(3):
        env.reset(seed=seed)
        for index, geom in enumerate(env._object_geoms[:env.num_objects]):
            x, y, z = env.data.qpos[env._object_qpos[index]:env._object_qpos[index] + 3]
            column = int(round(size / 2 + focal * x / (TOP_CAMERA_HEIGHT - z) - 0.5))
            row = int(round(size / 2 - focal * y / (TOP_CAMERA_HEIGHT - z) - 0.5))
            shown = render()
            alpha = env.model.geom_rgba[geom, 3]
            env.model.geom_rgba[geom, 3] = 0.0
            hidden = render()
            env.model.geom_rgba[geom, 3] = alpha
            changed = np.abs(shown - hidden).sum(-1) > 30
            assert changed[row, column], (seed, index, row, column)
            rows, columns = np.nonzero(changed)  # the object covers about 6 x 6 pixels (4 cm at 0.7 cm each)
            assert np.abs(rows - row).max() <= 4 and np.abs(columns - column).max() <= 4, (seed, index)
    env.close()


@pytest.mark.parametrize("task", TASK_NAMES)
def test_scripted_expert_succeeds_within_the_preset_time_limit(task):
    env = make_env(env_config(task, "use_camera=false"))
    for seed in range(8):
        terminated, truncated, info, steps = run_expert(env, seed)
        assert info["success"] and terminated and not truncated, (task, seed, steps, info)
        assert info["task"] == f"tabletop/{task}"
    env.close()


def test_time_limit_truncates_and_does_not_terminate():
    env = make_env(env_config("reach", "use_camera=false"))
    _, info = env.reset(seed=0)
    assert info["success"] is False
    idle = np.zeros(env.action_space.shape, dtype=np.float32)
    for step in range(1, 61):
        _, _, terminated, truncated, info = env.step(idle)
        assert not terminated and not info["success"]
        assert truncated == (step == 60)
    env.close()


def test_object_knocked_off_the_table_does_not_end_the_episode_and_costs_the_most():
    """Terminating there ended the per-step costs early: PPO learned to push objects off the table on purpose."""
    env = make_env(env_config("push", "use_camera=false"), expert=True)
    env.reset(seed=0)
    expert_action = env.get_wrapper_attr("expert_action")
    assert expert_action().shape == env.action_space.shape
    table_env = env.unwrapped
    address = table_env._object_qpos[table_env.get_task_state()["target"]]
    table_env.data.qpos[address:address + 3] = [0.6, 0.0, 0.05]  # beyond the table's edge at 0.4 m
    idle = np.zeros(env.action_space.shape, dtype=np.float32)
    rewards = []
    for step in range(1, 151):
        _, reward, terminated, truncated, info = env.step(idle)
        rewards.append(reward)
        assert not terminated and not info["success"]
    assert truncated
    # It lies on the invisible floor (bounded positions for normalizers), and every step costs the most a step
    # can cost, at least as much as any state with the object on the table (test_push_cost_is_staged...).
    assert table_env.measures().target[2] == pytest.approx(FLOOR_HEIGHT + OBJECT_HALF_SIZE, abs=0.01)
    np.testing.assert_allclose(rewards[-50:], -PUSH_OFF_TABLE_COST)
    assert expert_action() is None  # beyond recovery: the scripted expert has no action to show
    env.close()


def test_observations_follow_the_env_contract():
    env = make_env(env_config("lift"), render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"state", "image", "wrist_image", "instruction"}
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (7,)
    for key in ("image", "wrist_image"):
        assert obs[key].dtype == np.uint8 and obs[key].shape == (64, 64, 3)
        assert obs[key].std() > 10  # a scene, not a blank frame
    assert isinstance(obs["instruction"], str)
    moved, *_ = env.step(np.array([1.0, 1.0, -1.0, 0.0], dtype=np.float32))
    assert not np.array_equal(moved["image"], obs["image"])  # the gripper moved in view
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == (256, 256, 3)
    env.close()


def test_privileged_state_appends_object_and_goal_positions():
    env = TabletopEnv("push", use_camera=False, privileged_state=True)
    obs, _ = env.reset(seed=3)
    measures = env.measures()
    assert obs["state"].shape == (13,)
    np.testing.assert_allclose(obs["state"][7:10], measures.target, atol=1e-6)
    np.testing.assert_allclose(obs["state"][10:12], measures.zone[:2], atol=1e-6)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_instruction_names_the_target_by_its_rendered_colour_and_shape(task):
    env = TabletopEnv(task, use_camera=False, num_objects=4)
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        state = env.get_task_state()
        target = state["target"]
        colour = COLOUR_NAMES[state["colours"][target]]
        nouns = SHAPE_NOUNS[SHAPES[target % len(SHAPES)]]
        assert any(f"{colour} {noun}" in obs["instruction"] for noun in nouns), obs["instruction"]
        rendered = env.model.geom_rgba[env._object_geoms[target]]
        np.testing.assert_allclose(rendered, COLOURS[colour])
        assert len(set(state["colours"])) == 4  # every object has its own colour: the name is unambiguous
        if task == "push":
            assert f"{COLOUR_NAMES[state['zone_colours'][state['target_zone']]]} " in obs["instruction"]


def test_instruction_mode_fixed_uses_the_canonical_paraphrase_and_sample_varies_it():
    fixed = TabletopEnv("reach", use_camera=False, instruction_mode="fixed")
    sampled = TabletopEnv("reach", use_camera=False, instruction_mode="sample")
    fixed_texts = {fixed.reset(seed=seed)[0]["instruction"].split(" the ")[0] for seed in range(20)}
    sampled_texts = {sampled.reset(seed=seed)[0]["instruction"].split(" the ")[0] for seed in range(20)}
    assert fixed_texts == {"reach"}
    assert len(sampled_texts) >= 3


def test_same_seed_same_episode_and_different_seeds_differ():
    env = make_env(env_config("push"))
    actions = np.random.default_rng(0).uniform(-1, 1, size=(15, 4)).astype(np.float32)

    def episode(seed):
        obs, _ = env.reset(seed=seed)
        trace = [obs]
        for action in actions:
            trace.append(env.step(action)[0])
        return trace

    first, again, other = episode(7), episode(7), episode(8)
    for a, b in zip(first, again):
        assert a["instruction"] == b["instruction"]
        np.testing.assert_array_equal(a["state"], b["state"])
        np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(first[0]["image"], other[0]["image"])
    env.close()


def test_snapshot_restore_gives_identical_next_steps_in_a_fresh_env():
    cfg = env_config("push")
    actions = np.random.default_rng(1).uniform(-1, 1, size=(12, 4)).astype(np.float32)
    source = make_env(cfg)
    source.reset(seed=11)
    for action in actions[:5]:
        source.step(action)
    snapshot = json.loads(json.dumps(source.get_snapshot()))  # checkpoints store it as JSON
    expected = [source.step(action) for action in actions[5:]]
    source.close()

    resumed = make_env(cfg)
    resumed.reset(seed=99)  # a different episode: colours, target, zones and instruction all differ
    resumed.restore_snapshot([snapshot])
    for action, (obs, reward, terminated, truncated, info) in zip(actions[5:], expected):
        got_obs, got_reward, got_terminated, got_truncated, got_info = resumed.step(action)
        assert got_obs["instruction"] == obs["instruction"]
        np.testing.assert_array_equal(got_obs["state"], obs["state"])
        np.testing.assert_array_equal(got_obs["image"], obs["image"])
        assert (got_reward, got_terminated, got_truncated, got_info) == (reward, terminated, truncated, info)
    # The time-limit counter came back too: the episode truncates at the preset's 150th step either way.
    assert resumed.get_snapshot()["elapsed_steps"] == [len(actions)]
    resumed.close()


def test_sparse_reward_pays_only_on_success_and_time_penalty_is_charged_every_step():
    env = make_env(env_config("reach", "use_camera=false", "reward=sparse", "time_penalty=0.01"))
    env.reset(seed=2)
    rewards, successes = [], []
    while True:
        _, reward, terminated, truncated, info = env.step(normalized(env, scripted_action(env.unwrapped)))
        rewards.append(reward)
        successes.append(info["success"])
        if terminated or truncated:
            break
    np.testing.assert_allclose(rewards, np.array(successes, dtype=float) - 0.01)
    assert successes[-1]
    env.close()


def test_dense_reward_grows_as_the_expert_approaches():
    env = TabletopEnv("reach", use_camera=False)
    env.reset(seed=4)
    rewards = [env.step(scripted_action(env))[1] for _ in range(4)]
    assert all(later > earlier for earlier, later in zip(rewards, rewards[1:])), rewards


def push_cost(hand, target, zone=(0.2, 0.0, 0.0)) -> float:
    success, reward, _ = TASKS["push"].evaluate(TaskMeasures(hand=np.array(hand, dtype=float),
                                                             target=np.array(target, dtype=float),
                                                             zone=np.array(zone, dtype=float), grasped=False))
    return float(success) * SUCCESS_BONUS - reward  # the cost alone


def test_push_cost_is_staged_behind_the_object_and_pays_for_pushing_it():
    """The hand parked 4.5 cm behind an untouched object was where linear costs with one fixed target led PPO
    (7-13% success in 3M steps): behind the object the hand is drawn on to the contact point, so only pushing
    the object zone-wards lowers the cost further."""
    low = OBJECT_HALF_SIZE
    obj = (0.0, 0.0, low)  # the zone lies along +x, 0.2 m away
    approach = (-PUSH_APPROACH_OFFSET, 0.0, low)
    contact = (-PUSH_CONTACT_OFFSET, 0.0, low)
    # Behind and low: drawn to the contact point (cost: its distance to it, plus twice the object's distance).
    assert push_cost(approach, obj) == pytest.approx(PUSH_APPROACH_OFFSET - PUSH_CONTACT_OFFSET + 0.4)
    assert push_cost(contact, obj) == pytest.approx(0.4)
    # Beside the object, or above the approach point: not behind, drawn to the approach point, and dearer
    # than behind at any distance along the line.
    beside = (0.0, -PUSH_APPROACH_OFFSET, low)
    above = (-PUSH_APPROACH_OFFSET, 0.0, 0.1)
    far_behind = (-0.3, 0.0, low)
    assert push_cost(beside, obj) > push_cost(approach, obj)
    assert push_cost(above, obj) > push_cost(approach, obj)
    assert push_cost(far_behind, obj) < push_cost((-0.3, 0.01 + PUSH_APPROACH_OFFSET, low), obj)
    # Pushing: object and hand 1 cm further zone-wards costs 2 cm less.
    pushed = push_cost((-PUSH_CONTACT_OFFSET + 0.01, 0.0, low), (0.01, 0.0, low))
    assert pushed == pytest.approx(push_cost(contact, obj) - 0.02)
    # Off the table costs at least as much as any state on it.
    rng = np.random.default_rng(0)
    on_table = [push_cost(rng.uniform([r[0] for r in HAND_RANGE], [r[1] for r in HAND_RANGE]),
                          [*rng.uniform(-TABLE_HALF_SIZE, TABLE_HALF_SIZE, 2), low],
                          [*rng.uniform(-TABLE_HALF_SIZE, TABLE_HALF_SIZE, 2), 0.0]) for _ in range(2000)]
    assert push_cost((0.0, 0.0, 0.1), (0.6, 0.0, FLOOR_HEIGHT + low)) == PUSH_OFF_TABLE_COST >= max(on_table)


def test_async_vector_env_with_two_forkserver_workers():
    envs = make_vector_env(env_config("reach", "vector_mode=async"), num_envs=2)
    try:
        obs, info = envs.reset(seed=[0, 1])
        assert obs["image"].shape == (2, 64, 64, 3) and obs["state"].shape == (2, 7)
        assert len(obs["instruction"]) == 2 and list(info["task"]) == ["tabletop/reach"] * 2
        for _ in range(3):
            obs, reward, terminated, truncated, info = envs.step(np.zeros((2, 4), dtype=np.float32))
        assert reward.shape == (2,) and info["success"].dtype == bool
        snapshots = envs.call("get_snapshot")
        assert [s["task_state"]["instruction"] for s in snapshots] == list(obs["instruction"])
    finally:
        envs.close()


@pytest.mark.parametrize("override, message", [
    ("task=fly", "env.task='fly'"),
    ("reward=shaped", "env.reward='shaped'"),
    ("instruction_mode=random", "env.instruction_mode='random'"),
    ("cameras=[side]", "env.cameras entry='side'"),
    ("num_objects=0", "env.num_objects=0"),
    ("placement_range=0.9", "env.placement_range=0.9"),
])
def test_bad_config_values_raise_config_errors_naming_them(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        make_env(env_config("reach", override))
