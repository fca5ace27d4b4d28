"""The VLA actor-critic end to end through ``vla-train`` / ``vla-eval`` on an image + instruction task:
the offline ``towers`` backbone and a tiny Hugging Face VLM loaded from a local directory (the user path)."""

import json

import pytest

from tests.conftest import run_cli
from tests.test_backbones import save_tiny_vlm

TINY = ["env=tabletop_reach", "policy=gaussian_transformer", "critic=attention", "num_envs=2",
        "algo.num_steps=16", "algo.num_minibatches=2", "algo.update_epochs=1", "total_env_steps=64",
        "eval.episodes=2", "eval.video_episodes=1", "progress=false", "torch_threads=1"]


def test_towers_backbone_trains_evaluates_and_reloads(tmp_path):
    run_dir = tmp_path / "towers"
    result = run_cli("vla-train", *TINY, "backbone=towers", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((run_dir / "checkpoints" / "update_000002" / "state.json").read_text())
    assert state["backbone"]["name"] == "towers"
    assert list((run_dir / "eval" / "final" / "videos").glob("episode_000_*.mp4"))
    result = run_cli("vla-eval", f"checkpoint={run_dir}", "episodes=2", "num_envs=2", "progress=false",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "success rate" in result.stdout


@pytest.mark.parametrize("family", ["llava"])
def test_hf_backbone_from_a_local_directory_trains(tmp_path, family, monkeypatch):
    model_dir = save_tiny_vlm(tmp_path / family, family)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_dir = tmp_path / "hf"
    result = run_cli("vla-train", *TINY, "backbone=hf", f"backbone.model={model_dir}", "eval.video_episodes=0",
                     f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((run_dir / "checkpoints" / "update_000002" / "state.json").read_text())
    assert state["backbone"]["name"] == "hf" and str(model_dir) in json.dumps(state["backbone"])
