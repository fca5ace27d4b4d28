"""Is the named object's position decodable from the frozen towers' features? A supervised probe.

Diagnoses why PPO from camera + instruction learns tabletop reach slowly: it records frames of the tabletop
reach task (random actions, ``--episodes`` scenes, 8 frames each), computes the frozen EfficientNet /
MiniLM features once, then fits the trainable towers projection plus a small head to predict, from image and
instruction, either the *named* object's table position (localization + grounding of the instruction) or
the *mean* position of all objects (localization alone), and prints the held-out squared error of the
normalized x-y position (1.0 = no better than predicting the mean) as training goes.

Heads: ``concat`` (image tokens flattened, concatenated with the mean instruction token, then an MLP: the
instruction can only act additively) and ``grounded`` (the towers' grounded token, backbone.grounding_heads:
the pooled instruction queries the image tokens, then an MLP).

    python experiments/probe_grounding.py --episodes 1600
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("MUJOCO_GL", "egl")

from hydra import compose, initialize_config_dir  # noqa: E402

from envs import make_env  # noqa: E402
from vla.actor_critic import ActorCritic  # noqa: E402
from vla.config import register_configs  # noqa: E402


def record(env, episodes: int, seed: int):
    rng = np.random.default_rng(seed)
    frames, named, mean = [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        for _ in range(8):
            unwrapped = env.unwrapped
            frames.append(obs)
            named.append(unwrapped.measures().target[:2])
            mean.append(np.mean([unwrapped.data.qpos[a:a + 2] for a in unwrapped._object_qpos], axis=0))
            obs, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
    batch = {key: np.stack([o[key] for o in frames]) if isinstance(frames[0][key], np.ndarray)
             else [o[key] for o in frames] for key in frames[0]}
    return batch, np.array(named, np.float32), np.array(mean, np.float32)


class ConcatHead(nn.Module):
    def __init__(self, width: int, image_tokens: int):
        super().__init__()
        self.image_tokens = image_tokens
        self.squeeze = nn.Linear(width, 8)
        self.mlp = nn.Sequential(nn.Linear(8 * image_tokens + width, 256), nn.ReLU(), nn.Linear(256, 2))

    def forward(self, tokens):
        n, hidden, mask = self.image_tokens, tokens.hidden, tokens.mask
        text = (hidden[:, n:] * mask[:, n:, None]).sum(1) / mask[:, n:].sum(1, keepdim=True)
        return self.mlp(torch.cat([self.squeeze(hidden[:, :n]).flatten(1), text], dim=1))


class GroundedHead(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, 256), nn.ReLU(), nn.Linear(256, 2))

    def forward(self, tokens):
        return self.mlp(tokens.hidden[:, 0])


def probe(head_name: str, target_name: str, batch, target: np.ndarray, env, args) -> None:
    torch.manual_seed(args.seed)
    overrides = ["env=tabletop_reach", "backbone=towers", f"backbone.hidden_size={args.width}"]
    if head_name == "grounded":
        overrides.append("backbone.grounding_heads=4")
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent.parent / "conf"), version_base=None):
        cfg = compose("config", overrides=overrides)
    model = ActorCritic.from_config(cfg, env.observation_space, env.action_space)
    obs = model.to_tensors(batch)
    with torch.no_grad():
        features = model.encode_frozen(obs)
    y = torch.as_tensor(target)
    y = (y - y.mean(0)) / y.std(0)
    n = len(y)
    train = torch.arange(n) < int(0.85 * n)  # the last 15% of scenes are held out
    image_tokens = features["image"].shape[1]
    head = GroundedHead(args.width) if head_name == "grounded" else ConcatHead(args.width, image_tokens)
    optimizer = torch.optim.Adam(list(model.backbone.projection.parameters()) + list(head.parameters()), lr=args.lr)
    train_idx, valid_idx = torch.nonzero(train).flatten(), torch.nonzero(~train).flatten()
    start = time.perf_counter()
    for step in range(args.steps + 1):
        idx = train_idx[torch.randint(0, len(train_idx), (128,))]
        loss = (head(model.backbone.project({k: v[idx] for k, v in features.items()})) - y[idx]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 300 == 0:
            with torch.no_grad():
                pred = head(model.backbone.project({k: v[valid_idx] for k, v in features.items()}))
                valid = (pred - y[valid_idx]).pow(2).mean().item()
            print(f"| {head_name} | {target_name} | {step} | {loss.item():.3f} | {valid:.3f} | "
                  f"{time.perf_counter() - start:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=1600)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heads", nargs="+", default=["concat", "grounded"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    register_configs()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent.parent / "conf"), version_base=None):
        env = make_env(compose("config", overrides=["env=tabletop_reach"]).env)
    batch, named, mean = record(env, args.episodes, args.seed)
    print(f"{len(named)} frames from {args.episodes} scenes; held-out error of the normalized x-y position "
          "(1.0 = predicting the mean)\n")
    print("| head | target | step | train error | held-out error | seconds |\n|---|---|---:|---:|---:|---:|")
    for head_name in args.heads:
        probe(head_name, "mean of all objects", batch, mean, env, args)
        probe(head_name, "named object", batch, named, env, args)
    env.close()


if __name__ == "__main__":
    main()
