"""A real ``vla-train`` killed with SIGKILL (no handler runs, nothing is flushed on the way out) resumes from its
last intact checkpoint, and the finished run is the run that was never interrupted: the same losses at the
same env steps in tensorboard, each step exactly once.

One sync Reacher env pair and one torch thread make training deterministic, so an uninterrupted in-process run
is the reference: if any of weights, optimizer moments, normalizer statistics, reward scaler, RNGs or simulator
states did not come back, the losses after a resume would differ from it.
"""

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import train_config
from vla import checkpoint as ckpt
from vla.trainer import Trainer

STEPS_PER_UPDATE = 64
OVERRIDES = ["env=reacher", "num_envs=2", "algo.num_steps=32", "algo.num_minibatches=2", "algo.update_epochs=1",
             "progress=false", "torch_threads=1", "eval.episodes=0", "checkpoint.every_updates=1",
             "checkpoint.keep=3"]
LOSS_TAGS = ["losses/policy", "losses/value", "losses/entropy", "losses/approx_kl"]


def _start(run_dir: Path, updates: int, launch_dir: Path, resume: bool) -> subprocess.Popen:
    """``vla-train`` as a user starts it; a resume gets its own hydra directory (training continues in run_dir)."""
    args = [*OVERRIDES, f"total_env_steps={updates * STEPS_PER_UPDATE}", f"hydra.run.dir={launch_dir}"]
    if resume:
        args.append(f"resume={run_dir}")
    launch_dir.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(Path(sys.executable).parent / "vla-train"), *args], cwd=launch_dir.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _latest(run_dir: Path):
    latest = run_dir / "checkpoints" / ckpt.LATEST
    return latest.read_text().strip() if latest.is_file() else None


def _partial_writes(run_dir: Path):
    """Temporary checkpoint directories and ``latest`` files: what a write in progress looks like."""
    return [name for name in os.listdir(run_dir / "checkpoints") if ".tmp-" in name]


def _wait_for_training(proc: subprocess.Popen, run_dir: Path, previous_latest) -> None:
    """Until this process has written a checkpoint (``latest`` differs from ``previous_latest``)."""
    deadline = time.time() + 120
    while _latest(run_dir) in (None, previous_latest):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "training did not start"
        time.sleep(0.01)


def _kill(proc: subprocess.Popen) -> None:
    assert proc.poll() is None, "the run finished before the kill: give it more updates"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _read_until(proc: subprocess.Popen, text: str) -> None:
    for line in proc.stdout:
        if text in line:
            return
    raise AssertionError(f"vla-train exited without printing {text!r}")


def _kill_during_a_checkpoint_write(proc: subprocess.Popen, run_dir: Path) -> bool:
    """SIGKILL the moment this process's next checkpoint write shows (a new temporary directory or ``latest``
    file); True if the kill landed before the write finished (the partial write is still there)."""
    left_by_earlier_kills = set(_partial_writes(run_dir))
    deadline = time.time() + 120
    while not set(_partial_writes(run_dir)) - left_by_earlier_kills:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint write seen"
        time.sleep(0.0005)  # a write takes milliseconds: poll often, without spinning a core
    _kill(proc)
    return bool(set(_partial_writes(run_dir)) - left_by_earlier_kills)


def _resume_point(run_dir: Path):
    """The checkpoint a resume must use after a kill: the one ``latest`` names, which must be intact."""
    checkpoint = run_dir / "checkpoints" / _latest(run_dir)
    assert ckpt.verify(checkpoint) is None, ckpt.verify(checkpoint)
    return checkpoint, ckpt.load_checkpoint(checkpoint)["state"]["global_step"]


def _resume_after_kill(run_dir: Path, updates: int, launch_dir: Path) -> subprocess.Popen:
    """Resume the killed run; returns once it says it resumed from the intact checkpoint ``latest`` names."""
    checkpoint, step = _resume_point(run_dir)
    proc = _start(run_dir, updates, launch_dir, resume=True)
    _read_until(proc, f"resumed from {checkpoint} at env step {step}")
    return proc


def _scalars(tb_dir: Path, tag: str):
    accumulator = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    events = accumulator.Scalars(tag)
    return [e.step for e in events], np.array([e.value for e in events], dtype=np.float32)


def _check_finished_run_equals_uninterrupted(run_dir: Path, updates: int, tmp_path: Path) -> None:
    final = ckpt.load_checkpoint(run_dir)["state"]
    assert final["update_index"] == updates and final["global_step"] == updates * STEPS_PER_UPDATE
    cfg = train_config(*OVERRIDES, f"total_env_steps={updates * STEPS_PER_UPDATE}", "checkpoint.every_updates=1000")
    reference = Trainer(cfg, tmp_path / "reference").train()
    expected_steps = [STEPS_PER_UPDATE * (i + 1) for i in range(updates)]
    for tag in LOSS_TAGS:
        steps, values = _scalars(run_dir / "tb", tag)
        duplicates = sorted(step for step, count in Counter(steps).items() if count > 1)
        missing = sorted(set(expected_steps) - set(steps))
        assert steps == expected_steps, f"{tag}: duplicate steps {duplicates}, missing steps {missing}"
        expected = np.array([metrics[tag] for metrics in reference], dtype=np.float32)
        mismatch = np.flatnonzero(values != expected)
        assert not len(mismatch), f"{tag} differs from the uninterrupted run from step {steps[mismatch[0]]} on"


def _finish(run_dir: Path, updates: int, launch_dir: Path, expected_checkpoint: Path, expected_step: int):
    proc = _start(run_dir, updates, launch_dir, resume=True)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    assert f"resumed from {expected_checkpoint} at env step {expected_step}" in output


def test_sigkill_during_a_checkpoint_write_then_resume_continues_the_same_run(tmp_path):
    """Killed after a random delay, at the next checkpoint write: the update being saved has its scalars in
    tensorboard already and a partial checkpoint on disk, the hardest moment for a resume."""
    updates = 80  # an update takes tens of milliseconds on a quiet machine: the run must outlast the delay
    run_dir = tmp_path / "run"
    proc = _start(run_dir, updates, run_dir, resume=False)
    _wait_for_training(proc, run_dir, None)
    time.sleep(random.Random(0).uniform(0.05, 0.3))
    for attempt in range(3):
        if _kill_during_a_checkpoint_write(proc, run_dir):
            break
        # The write finished between being seen and the kill landing (a write takes milliseconds): that kill
        # was an ordinary one, so resume from it and try again.
        proc = _resume_after_kill(run_dir, updates, tmp_path / f"retry{attempt}")
        _wait_for_training(proc, run_dir, _latest(run_dir))
    else:
        pytest.fail("three kills in a row missed the checkpoint write")
    checkpoint, step = _resume_point(run_dir)
    assert 0 < step < updates * STEPS_PER_UPDATE
    _finish(run_dir, updates, tmp_path / "resume", checkpoint, step)
    assert not _partial_writes(run_dir)  # the interrupted write's leftovers were cleaned up
    _check_finished_run_equals_uninterrupted(run_dir, updates, tmp_path)


@pytest.mark.slow
def test_repeated_sigkills_at_random_moments_and_during_checkpoint_writes(tmp_path):
    updates = 300
    run_dir = tmp_path / "run"
    rng = random.Random(1)
    proc = _start(run_dir, updates, run_dir, resume=False)
    for kill in range(4):
        _wait_for_training(proc, run_dir, _latest(run_dir))
        if kill % 2:
            assert _kill_during_a_checkpoint_write(proc, run_dir), "the kill missed the checkpoint write"
        else:
            time.sleep(rng.uniform(0.05, 0.5))
            _kill(proc)
        launch_dir = tmp_path / f"resume{kill}"
        if kill < 3:
            proc = _resume_after_kill(run_dir, updates, launch_dir)
    checkpoint, step = _resume_point(run_dir)
    _finish(run_dir, updates, launch_dir, checkpoint, step)
    assert not _partial_writes(run_dir)
    _check_finished_run_equals_uninterrupted(run_dir, updates, tmp_path)
