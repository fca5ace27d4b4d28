"""overlap_envs: two env groups half a step apart collect the same rollout as one vector env."""

import functools

import numpy as np
import pytest
import torch

from envs.registry import SplitVectorEnv
from tests.conftest import train_config
from vla.errors import ConfigError
from vla.trainer import Trainer, set_obs_slice

# The policy's mean action and no state normalizer: both runs see the same observations, so they must take the
# same actions, whatever order the policy is called in.
OVERRIDES = ["env=tabletop_reach_state", "env.max_episode_steps=12", "env.vector_mode=async", "num_envs=5",
             "algo.num_steps=30", "algo.norm_state=false", "progress=false", "eval.episodes=0", "torch_threads=1"]


def collect(tmp_path, overlap: bool):
    trainer = Trainer(train_config(*OVERRIDES, f"overlap_envs={overlap}"), tmp_path / str(overlap))
    try:
        if overlap:
            assert isinstance(trainer.rollouts.envs, SplitVectorEnv)
            assert [s.stop - s.start for s in trainer.rollouts.envs.slices] == [2, 3]
        trainer.model.act = functools.partial(trainer.model.act, deterministic=True)
        trainer.collect_rollout()
        episodes = list(trainer.episodes.recent)
        snapshots = trainer.rollouts.snapshots()
        return {k: v.clone() for k, v in trainer.storage.data.items()}, episodes, snapshots
    finally:
        trainer.close()


def test_overlapped_groups_collect_the_same_rollout_as_one_vector_env(tmp_path):
    plain, plain_episodes, plain_snapshots = collect(tmp_path, False)
    overlapped, overlapped_episodes, overlapped_snapshots = collect(tmp_path, True)
    assert plain.keys() == overlapped.keys()
    assert plain["truncated"].sum() >= 10  # autoresets and time-limit bootstraps inside the rollout
    for key in plain:
        torch.testing.assert_close(overlapped[key], plain[key], atol=1e-5, rtol=1e-5, msg=key)
    assert sorted(e["return"] for e in overlapped_episodes) == pytest.approx(
        sorted(e["return"] for e in plain_episodes), abs=1e-4)
    # Env i keeps its place (and seed) in the split: the simulator states match env by env.
    assert len(overlapped_snapshots) == 5
    for a, b in zip(plain_snapshots, overlapped_snapshots):
        np.testing.assert_allclose(a["physics"], b["physics"], atol=1e-6)
        assert a["task_state"] == b["task_state"]


def test_set_obs_slice_builds_new_arrays_and_keeps_text_tuples():
    full = {"state": np.zeros((4, 2), np.float32), "instruction": ("a", "b", "c", "d")}
    merged = set_obs_slice(full, {"state": np.ones((2, 2), np.float32), "instruction": ("x", "y")}, slice(2, 4))
    assert merged["instruction"] == ("a", "b", "x", "y")
    np.testing.assert_array_equal(merged["state"][:, 0], [0, 0, 1, 1])
    assert full["state"].sum() == 0  # tensors made from the old arrays may alias them: never written in place


def test_overlap_needs_async_workers_and_two_envs(tmp_path):
    with pytest.raises(ConfigError, match="overlap_envs=true needs at least 2 envs in async workers"):
        Trainer(train_config(*OVERRIDES, "overlap_envs=true", "env.vector_mode=sync"), tmp_path)
