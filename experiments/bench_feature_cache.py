"""PPO update time per epoch with feature caching vs recomputing the frozen backbone, for backbones of very
different sizes.

With caching the update runs only the trainable projection and the heads, so its time should barely depend on
the size of the frozen towers; recomputing runs the towers in every minibatch of every epoch.

    python experiments/bench_feature_cache.py

Prints a table and writes experiments/results/bench_feature_cache.md. The tiny Llava-style VLMs are random
(built from transformers configs and loaded through ``backbone=hf`` like a hub checkpoint); timings do not
depend on the weights' values.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.test_backbones import (  # noqa: E402  (the test helpers build the dummy env and the tiny VLMs)
    ImageInstructionEnv, actor_critic, collect, ppo_config, ppo_update, save_tiny_vlm, without_cached_features)

NUM_STEPS, NUM_ENVS, UPDATE_EPOCHS, NUM_MINIBATCHES = 32, 4, 2, 4
IMAGE_SIZE, TOKEN_WIDTH = 64, 128


def update_seconds_per_epoch(model, storage, algo, repeats: int) -> float:
    """Best of ``repeats`` timed updates (the machine is shared: the minimum is the least disturbed run)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        stats = ppo_update(model, storage, algo)
        times.append((time.perf_counter() - start) / stats.epochs)
    return min(times)


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    env = ImageInstructionEnv(image_size=IMAGE_SIZE)
    heads = ("policy.width=64", "critic.attention_dim=64")
    algo = ppo_config(update_epochs=UPDATE_EPOCHS, num_minibatches=NUM_MINIBATCHES)
    with tempfile.TemporaryDirectory() as tmp:
        backbones = {
            "towers (EfficientNet-Lite0 + MiniLM-L6, pretrained)": ["backbone=towers"],
            "hf tiny Llava (width 32, 2+2 layers)": [
                "backbone=hf", f"backbone.model={save_tiny_vlm(Path(tmp) / 'small', 'llava', 32, 2)}"],
            "hf Llava (width 512, 8+8 layers)": [
                "backbone=hf", f"backbone.model={save_tiny_vlm(Path(tmp) / 'large', 'llava', 512, 8)}"],
        }
        rows = []
        for label, overrides in backbones.items():
            model = actor_critic(env, *overrides, f"backbone.hidden_size={TOKEN_WIDTH}", *heads)
            frozen = sum(p.numel() for n, p in model.backbone.named_parameters() if not n.startswith("projection."))
            storage, observations = collect(model, env, NUM_STEPS, NUM_ENVS)
            with torch.no_grad():
                tokens = model.encode(observations[0]).hidden.shape[1]
            raw_storage = without_cached_features(storage, observations)
            ppo_update(model, storage, algo)  # warm-up: the first backward pass allocates and initialises
            cached = update_seconds_per_epoch(model, storage, algo, repeats=3)
            recomputed = update_seconds_per_epoch(model, raw_storage, algo, repeats=1)
            rows.append((label, frozen / 1e6, tokens, cached, recomputed))
            print(f"{label}: {frozen / 1e6:.1f}M frozen params, {tokens} tokens, cached {cached:.3f} s/epoch, "
                  f"recomputed {recomputed:.3f} s/epoch", flush=True)

    lines = [
        "# PPO update time per epoch: feature caching vs recomputing the frozen backbone",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads.",
        f"Rollout: {NUM_STEPS} steps x {NUM_ENVS} envs = {NUM_STEPS * NUM_ENVS} transitions of a dummy task with "
        f"one {IMAGE_SIZE}x{IMAGE_SIZE} camera and an instruction; {NUM_MINIBATCHES} minibatches per epoch; "
        f"heads: policy=gaussian_transformer (width 64), critic=attention; projected token width {TOKEN_WIDTH}.",
        "The hf backbones are random Llava-style models (SigLIP vision + Qwen2 text) loaded through backbone=hf.",
        "Cached: best of 3 updates after a warm-up update; recomputed: 1 update. Other jobs shared the 2 cores "
        "during the run, so single numbers carry some noise.",
        "",
        "| backbone | frozen params (M) | tokens | cached (s/epoch) | recomputed (s/epoch) | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {label} | {params:.1f} | {tokens} | {cached:.3f} | {recomputed:.3f} | {recomputed / cached:.1f}x |"
          for label, params, tokens, cached, recomputed in rows],
        "",
        "Command: `python experiments/bench_feature_cache.py`",
    ]
    out = REPO / "experiments" / "results" / "bench_feature_cache.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
