"""SIGTERM / SIGINT stop training gracefully: the current update finishes, a checkpoint is written, exit 0."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_update_writes_checkpoint_and_exits_zero(tmp_path, sig):
    run_dir = tmp_path / "run"
    exe = Path(sys.executable).parent / "vla-train"
    proc = subprocess.Popen(
        [str(exe), "num_envs=2", "env.vector_mode=async", "algo.num_steps=64", "algo.num_minibatches=2",
         "algo.update_epochs=1", "total_env_steps=10000000", "checkpoint.every_updates=1000", "progress=false",
         "torch_threads=1", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not list((run_dir / "tb").glob("events.*")) or time.time() < deadline - 110:
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "training did not start"
            time.sleep(0.5)
        time.sleep(2.0)  # a few updates in
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert f"stopped by {sig.name}" in output
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    state = json.loads((run_dir / "checkpoints" / latest / "state.json").read_text())
    assert state["update_index"] >= 1 and state["global_step"] == state["update_index"] * 128
