"""NaN/inf in observations or rewards: updates are skipped and counted, the run stops with a clear message
after max_nonfinite_updates in a row, and no checkpoint with non-finite weights is written."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from tests.conftest import train_config
from vla import checkpoint as ckpt
from vla.errors import TrainingDivergedError
from vla.trainer import Trainer


class CorruptAfter(gym.Wrapper):
    """Reacher that starts emitting NaN in the reward or the observation after ``after`` steps."""

    def __init__(self, after: int, where: str):
        super().__init__(gym.make("Reacher-v5"))
        self.after, self.where, self.steps = after, where, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self.steps > self.after:
            if self.where == "reward":
                reward = float("nan")
            else:
                obs = np.full_like(obs, np.inf)
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize("where", ["reward", "observation"])
def test_nonfinite_inputs_skip_updates_then_stop_without_nan_checkpoint(tmp_path, small_train_overrides, where):
    gym.register(f"CorruptReacher-{where}-v0", entry_point=lambda render_mode=None: CorruptAfter(after=64, where=where),
                 max_episode_steps=50)
    cfg = train_config(*small_train_overrides, f"env.id=CorruptReacher-{where}-v0", "env.vector_mode=sync",
                       "total_env_steps=2048", "checkpoint.every_updates=1", "max_nonfinite_updates=2")
    trainer = Trainer(cfg, tmp_path)
    with pytest.raises(TrainingDivergedError, match="2 updates in a row"):
        trainer.train()
    # 32 steps per env and update: each env's first 64 steps are clean, so updates 1-2 train, update 3 is
    # skipped (and checkpointed, with the weights of update 2), the skip of update 4 stops the run
    assert trainer.update_index == 3
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded["state"]["update_index"] == 3
    for value in loaded["weights"].values():
        assert torch.isfinite(value).all()
    assert np.isfinite(trainer.model.state_rms.mean.numpy()).all()  # the normalizer never saw the inf states


def test_checkpoint_with_nan_weights_is_refused_and_previous_stays_latest(tmp_path, small_train_overrides):
    trainer = Trainer(train_config(*small_train_overrides), tmp_path)
    trainer.train()
    with torch.no_grad():
        trainer.model.expert.log_std.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="expert.log_std"):
        trainer.save()
    assert ckpt.load_checkpoint(tmp_path)["path"].name == "update_000004"
