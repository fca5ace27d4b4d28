"""Checkpoint round trip, atomicity, corruption detection and exact resume."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import train_config
from vla import checkpoint as ckpt
from vla.trainer import Trainer


def _save(root: Path, name: str, value: float):
    return ckpt.save_checkpoint(root, name, weights={"w": torch.full((3,), value)},
                                trainer_state={"step": torch.tensor(1)}, state={"global_step": 1},
                                config_yaml="a: 1\n", keep=3)


def test_round_trip(tmp_path):
    _save(tmp_path, "update_000001", 1.5)
    loaded = ckpt.load_checkpoint(tmp_path)
    assert torch.equal(loaded["weights"]["w"], torch.full((3,), 1.5))
    assert loaded["state"] == {"global_step": 1}
    assert loaded["path"].name == "update_000001"


def test_latest_points_at_newest_and_old_ones_are_pruned(tmp_path):
    for i in range(1, 6):
        _save(tmp_path, f"update_{i:06d}", float(i))
    assert (tmp_path / "latest").read_text().strip() == "update_000005"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "update_000003", "update_000004", "update_000005"]


def test_truncated_file_is_detected_and_previous_checkpoint_used(tmp_path):
    _save(tmp_path, "update_000001", 1.0)
    newest = _save(tmp_path, "update_000002", 2.0)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])  # a torn write
    assert "checksum" in ckpt.verify(newest)
    loaded = ckpt.load_checkpoint(tmp_path)  # run dir: falls back to the newest intact checkpoint
    assert loaded["path"].name == "update_000001"
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        ckpt.load_checkpoint(newest)  # an explicitly named broken checkpoint is refused, not silently swapped


def test_kill_during_write_leaves_previous_loadable(tmp_path):
    _save(tmp_path, "update_000001", 1.0)
    # What a process killed mid-write leaves behind: a temporary directory without a manifest.
    partial = tmp_path / f".update_000002.tmp-{os.getpid() + 1}"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 10)
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded["path"].name == "update_000001"
    _save(tmp_path, "update_000003", 3.0)
    assert not partial.exists()  # cleaned up by the next successful write


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(ckpt.CheckpointError, match="no intact checkpoint"):
        ckpt.resolve_checkpoint(tmp_path)


def test_the_latest_pointer_file_resolves_to_the_checkpoint_it_names(tmp_path):
    _save(tmp_path, "update_000001", 1.0)
    _save(tmp_path, "update_000002", 2.0)
    assert ckpt.resolve_checkpoint(tmp_path / "latest") == tmp_path / "update_000002"
    (tmp_path / "latest").write_text("update_000009\n")  # names a checkpoint that is gone
    with pytest.raises(ckpt.CheckpointError, match="update_000009, which does not exist"):
        ckpt.resolve_checkpoint(tmp_path / "latest")
    with pytest.raises(ckpt.CheckpointError, match="is a file"):
        ckpt.resolve_checkpoint(tmp_path / "update_000002" / "model.safetensors")


def _train(overrides, run_dir):
    trainer = Trainer(train_config(*overrides), run_dir)
    return trainer.train(), trainer


@pytest.mark.parametrize("env", [
    ["env=reacher"],
    # our MuJoCo tabletop task: per-episode task state (target, instruction) and text observations come back too
    ["env=tabletop_reach", "env.use_camera=false", "env.privileged_state=true"],
])
def test_exact_resume_reproduces_the_uninterrupted_run(tmp_path, small_train_overrides, env):
    """One sync env, fixed seed: the updates after a resume log the same losses as the uninterrupted run."""
    overrides = [*small_train_overrides, *env, "num_envs=1", "algo.num_steps=64", "total_env_steps=320",
                 "checkpoint.every_updates=2", "checkpoint.keep=10", "env.max_episode_steps=40"]
    full, _ = _train(overrides, tmp_path / "full")
    assert len(full) == 5
    resumed, trainer = _train([*overrides, f"resume={tmp_path / 'full' / 'checkpoints' / 'update_000002'}"],
                              tmp_path / "ignored")
    assert trainer.run_dir == tmp_path / "full"  # the run continues in its own directory
    assert len(resumed) == 3
    keys = ["losses/policy", "losses/value", "losses/entropy", "losses/approx_kl", "train/episode_return"]
    for a, b in zip(full[2:], resumed):
        for key in keys:
            if key in a or key in b:
                assert a[key] == b[key], (key, a[key], b[key])


def test_checkpoint_holds_trainable_weights_normalizers_and_counters(tmp_path, small_train_overrides):
    _, trainer = _train(small_train_overrides, tmp_path)
    loaded = ckpt.load_checkpoint(tmp_path)
    assert "state_rms.mean" in loaded["weights"] and "expert.log_std" in loaded["weights"]
    assert loaded["state"]["global_step"] == trainer.global_step == 256
    assert loaded["state"]["backbone"]["name"] == "state"
    assert "optimizer" in loaded["trainer"] and "torch_cpu" in loaded["trainer"]["rng"]
    manifest = json.loads((loaded["path"] / "manifest.json").read_text())
    assert set(manifest) == {"model.safetensors", "trainer.pt", "state.json", "config.yaml"}
    assert np.isfinite(loaded["weights"]["expert.log_std"].numpy()).all()


def test_resume_refuses_a_checkpoint_for_another_action_space(tmp_path, small_train_overrides):
    _train(small_train_overrides, tmp_path / "reacher")
    with pytest.raises(ckpt.CheckpointError, match="does not fit"):
        Trainer(train_config(*small_train_overrides, "env=pusher", f"resume={tmp_path / 'reacher'}"),
                tmp_path / "x")
