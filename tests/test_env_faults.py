"""Env workers that raise or die mid-rollout are restarted, their episodes dropped and counted; repeated
failures stop the run with the env's own error."""

import pytest

from tests.conftest import train_config
from vla.errors import EnvFailureError
from vla.trainer import Trainer

FAULTY = "env.id=tests.faulty_env:FaultyReacher-v0"


@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_failed_worker_is_restarted_and_training_continues(tmp_path, small_train_overrides, mode):
    marker = tmp_path / "failed_once"
    cfg = train_config(*small_train_overrides, FAULTY, "env.vector_mode=async",
                       f"+env.kwargs={{mode: {mode}, at_step: 40, marker: '{marker}'}}")
    trainer = Trainer(cfg, tmp_path / "run")
    history = trainer.train()
    assert marker.exists()  # the fault did happen
    assert len(history) == 4 and trainer.global_step == 256
    assert trainer.env_restarts == 1 and trainer.dropped_episodes == 2
    assert history[-1]["reliability/env_restarts"] == 1.0


def test_repeated_failures_stop_with_the_envs_error(tmp_path, small_train_overrides):
    cfg = train_config(*small_train_overrides, FAULTY, "env.vector_mode=sync", "max_env_failures=2",
                       f"+env.kwargs={{mode: raise, at_step: 10, marker: '{tmp_path / 'm'}', always: true}}")
    trainer = Trainer(cfg, tmp_path / "run")
    with pytest.raises(EnvFailureError, match="injected fault at step 10") as info:
        trainer.train()
    assert "FaultyReacher" in str(info.value) and "2 times in a row" in str(info.value)
