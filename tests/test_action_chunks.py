"""Action chunks: the env wrapper runs K actions per step, the trainer stores one semi-MDP transition per chunk,
evaluation runs chunks and records every step."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from envs import make_env, make_vector_env
from envs.wrappers import ActionChunk, chunk_stats
from tests.conftest import train_config
from vla.evaluate import run_episodes
from vla.trainer import Trainer


class Counter(gym.Env):
    """Reward = the action's first coordinate + the step index; terminates after ``length`` steps."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, length=5, render_mode=None):
        self.length, self.render_mode = length, render_mode
        self.observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.actions = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.actions.append(np.asarray(action).copy())
        reward = float(action[0]) + self.t
        self.t += 1
        return np.full(1, self.t, np.float32), reward, self.t >= self.length, False, {"t": self.t}

    def render(self):
        return np.full((4, 4, 3), self.t, np.uint8)


def test_chunk_wrapper_runs_the_actions_in_order_and_sums_discounted_rewards():
    env = ActionChunk(Counter(length=5), steps=3, gamma=0.5)
    assert env.action_space.shape == (6,)
    env.reset(seed=0)
    chunk = np.array([0.1, 0, 0.2, 0, 0.3, 0], np.float32)
    obs, reward, terminated, truncated, info = env.step(chunk)
    assert [a[0] for a in env.unwrapped.actions] == pytest.approx([0.1, 0.2, 0.3])
    assert reward == pytest.approx(0.1 + 0.5 * 1.2 + 0.25 * 2.3)
    assert info["chunk_steps"] == 3 and info["chunk_return"] == pytest.approx(0.1 + 1.2 + 2.3)
    assert not terminated and obs[0] == 3
    # The episode ends after 2 of the next 3 actions: the third is dropped, not run in a new episode.
    obs, reward, terminated, truncated, info = env.step(chunk)
    assert terminated and info["chunk_steps"] == 2 and len(env.unwrapped.actions) == 5
    assert reward == pytest.approx(3.1 + 0.5 * 4.2)


def test_chunk_wrapper_keeps_the_frames_inside_a_chunk_for_videos():
    env = ActionChunk(Counter(length=5, render_mode="rgb_array"), steps=3, gamma=1.0)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(6, np.float32))
    assert [frame[0, 0, 0] for frame in info["chunk_frames"]] == [1, 2]  # the 3rd frame: the caller's render


def test_vector_chunk_stats_read_ended_envs_from_final_info():
    cfg = train_config("env=tabletop_reach", "env.max_episode_steps=5", "env.vector_mode=sync").env
    envs = make_vector_env(cfg, 2, action_chunk=3, gamma=0.9)
    try:
        envs.reset(seed=0)
        dim = make_env(cfg).action_space.shape[0]
        assert envs.single_action_space.shape == (3 * dim,)
        chunk = np.zeros((2, 3 * dim), np.float32)
        _, reward, _, truncated, info = envs.step(chunk)
        steps, _ = chunk_stats(info, reward)
        assert steps.tolist() == [3, 3] and not truncated.any()
        _, reward, _, truncated, info = envs.step(chunk)
        steps, undiscounted = chunk_stats(info, reward)
        assert truncated.all() and steps.tolist() == [2, 2]  # cut by the time limit after 5 steps
        assert np.allclose(undiscounted, info["final_info"]["chunk_return"])
    finally:
        envs.close()


def chunk_overrides(*extra):
    return ["env=tabletop_reach", "policy=gaussian_transformer", "policy.width=32", "policy.feedforward_size=64",
            "policy.num_layers=1", "policy.chunk_size=4", "num_envs=2", "algo.num_steps=16",
            "algo.num_minibatches=2", "algo.update_epochs=1", "total_env_steps=256", "progress=false",
            "eval.episodes=2", "eval.video_episodes=1", "torch_threads=1", *extra]


@pytest.mark.parametrize("execute_steps", [None, 2])
def test_trainer_counts_env_steps_of_chunks_and_discounts_each_transition(tmp_path, execute_steps):
    extra = [] if execute_steps is None else [f"policy.execute_steps={execute_steps}"]
    trainer = Trainer(train_config(*chunk_overrides(*extra)), tmp_path)
    executed = execute_steps or 4
    assert trainer.num_updates == 256 // (16 * 2 * executed)
    action_dim = trainer.action_dim
    collected = []
    collect = trainer.collect_rollout

    def counting_collect():
        rollout = collect()
        collected.append(int(trainer.storage.data["env_steps"].sum()))
        return rollout

    trainer.collect_rollout = counting_collect
    trainer.train()
    data = trainer.storage.data
    assert data["action"].shape[-1] == executed * action_dim
    steps = data["env_steps"]
    assert steps.max() == executed and steps.min() >= 1
    torch.testing.assert_close(data["discount"], 0.99 ** steps.float())
    # The global step counts the env steps actually run (fewer than K where an episode ended mid-chunk).
    assert trainer.global_step == sum(collected) <= trainer.num_updates * 16 * 2 * executed
    report = trainer.final_report
    assert report["episodes"] == 2
    video = next((tmp_path / "eval" / "final" / "videos").iterdir())
    assert video.stat().st_size > 1000


def test_eval_with_chunks_records_every_env_step(tmp_path):
    trainer = Trainer(train_config(*chunk_overrides("total_env_steps=128", "eval.episodes=0")), tmp_path)
    rows, videos = run_episodes(trainer.model, trainer.cfg.env, episodes=2, seed=5, num_envs=2,
                                deterministic=True, record=1)
    trainer.close()
    assert len(videos[0]) == rows[0]["length"] + 1  # the reset frame and one per env step
