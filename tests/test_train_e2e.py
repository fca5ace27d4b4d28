"""End to end through the console scripts, as a user runs them: train, tensorboard tags, evaluate, resume."""

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import run_cli

REQUIRED_TAGS = {
    "train/success_rate", "train/episode_length", "train/episode_return", "losses/policy", "losses/value",
    "losses/entropy", "losses/approx_kl", "losses/clip_fraction", "losses/explained_variance", "perf/sps",
}
TINY = ["env=reacher", "num_envs=2", "algo.num_steps=64", "algo.num_minibatches=4", "algo.update_epochs=2",
        "total_env_steps=512", "eval.episodes=4", "progress=false", "torch_threads=1"]


def test_train_writes_tensorboard_checkpoints_and_report_then_eval_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("vla-train", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final evaluation: success rate" in result.stdout

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert REQUIRED_TAGS <= tags, REQUIRED_TAGS - tags
    steps = [e.step for e in events.Scalars("losses/policy")]
    assert steps == [128, 256, 384, 512]
    assert "config" in " ".join(events.Tags()["tensors"])  # the config is recorded as text

    report = json.loads((run_dir / "eval" / "final" / "report.json").read_text())
    assert report["episodes"] == 4 and 0.0 <= report["success_rate"] <= 1.0
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "update_000004"

    # vla-eval on the checkpoint: report.json + report.md inside the run's eval/ directory
    result = run_cli("vla-eval", f"checkpoint={run_dir}", "episodes=3", "num_envs=2", "progress=false",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (eval_dir,) = [p for p in (run_dir / "eval").iterdir() if p.name.startswith("latest-")]
    report = json.loads((eval_dir / "report.json").read_text())
    for key in ("success_rate", "success_ci95", "episode_length_mean", "episode_return_mean", "episodes",
                "per_task", "checkpoint", "config"):
        assert key in report
    assert report["episodes"] == 3 and report["checkpoint"]["global_step"] == 512
    assert (eval_dir / "report.md").read_text().startswith("# Evaluation report")

    # resume with a larger budget: continues the same run directory and tensorboard curve
    result = run_cli("vla-train", *TINY, "total_env_steps=768", f"resume={run_dir}", "eval.episodes=0",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    steps = [e.step for e in events.Scalars("losses/policy")]
    assert steps == [128, 256, 384, 512, 640, 768]


def test_eval_on_an_env_with_other_sizes_is_refused_clearly(tmp_path):
    run_dir = tmp_path / "run"
    args = [a for a in TINY if not a.startswith("total_env_steps")]
    result = run_cli("vla-train", *args, "total_env_steps=128", "eval.episodes=0", f"hydra.run.dir={run_dir}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("vla-eval", f"checkpoint={run_dir}", "env=pusher", "episodes=1", cwd=tmp_path)
    assert result.returncode == 2
    assert "does not fit" in result.stderr and "state size 10 vs 23" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_of_missing_checkpoint_is_a_clear_error(tmp_path):
    result = run_cli("vla-eval", f"checkpoint={tmp_path / 'nope'}", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_eval_with_no_torch_threads_is_a_clear_error(tmp_path):
    result = run_cli("vla-eval", f"checkpoint={tmp_path / 'nope'}", "torch_threads=0", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "torch_threads=0" in result.stderr and "Traceback" not in result.stderr


def test_multirun_sweep_writes_one_run_directory_per_seed(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = [a for a in TINY if not a.startswith("total_env_steps")]
    result = run_cli("vla-train", "-m", "seed=0,1", *args, "total_env_steps=128", "eval.episodes=2",
                     "eval.video_episodes=0", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert len(runs) == 2 and all("seed=" in name for name in runs)
    for name in runs:
        assert (sweep_dir / name / "checkpoints" / "latest").is_file()

    result = run_cli("vla-summary", str(sweep_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mean ± std (2 runs)" in (sweep_dir / "summary.md").read_text()
    assert (sweep_dir / "learning_curve.png").stat().st_size > 5000
