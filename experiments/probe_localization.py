"""How precisely do the towers' grounded tokens place the named object and its zone? A supervised probe on a
demonstration dataset.

A push needs the hand within about 1.5 cm of the line behind the object, so a pixel policy is only as good as
the positions its features carry. This probe reads a tabletop demo file recorded with ``env.privileged_obs=true``
(``vla-demos env=tabletop_push env.privileged_obs=true episodes=1000``), computes the frozen tower features of
its frames once per variant (every ``--frame-stride``-th of each demo), then fits the trainable towers
projection plus an MLP on the grounded token(s) to predict the named object's and its goal's table positions
(x, y), and prints the held-out error in centimetres (RMS, median and 90th percentile over the frames of the last
``--heldout`` fraction of the demos, whole scenes) for each backbone variant side by side. A variant
whose towers train (``backbone.train_image_tower=true``, or LoRA adapters) fits them too, encoding the frames at
every step: about 0.4 s per step of 128 frames on one core here, against 0.1 s per step of 256 frames frozen.

    python experiments/probe_localization.py /tmp/demos/push_px1000.hdf5 \\
        --variant "stride 8" --variant "stride 4" backbone.image_feature_stride=4

Each variant is a label then config overrides (``backbone=towers``, ``grounding_heads=4`` and the env's cameras
are set already). ``--train-demos N`` fits on the first N demos only (the held-out ones stay the same), to see
how the error falls with more scenes.
"""

from __future__ import annotations

import argparse
import json
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
from vla.demos import read_dataset  # noqa: E402

CONF = str(Path(__file__).resolve().parent.parent / "conf")
TARGETS = {"object": [0, 1], "goal": [3, 4]}  # columns of obs/privileged: named object xyz, goal xyz
NEAR = 0.08  # metres: the error is also reported apart for frames with the hand this close to the named object


def load(path: str, stride: int):
    """Frames (every ``stride``-th of each demo), instructions, privileged targets, demo index per frame, and
    the env settings the demos were recorded with."""
    dataset = read_dataset(path)
    demos = list(dataset.demos.values())
    obs = {key: np.concatenate([demo.obs[key][::stride] for demo in demos]) for key in demos[0].obs}
    counts = [len(demo.actions[::stride]) for demo in demos]
    instructions = [demo.instruction for demo, count in zip(demos, counts) for _ in range(count)]
    demo_index = np.repeat(np.arange(len(demos)), counts)
    return obs, instructions, obs.get("privileged"), demo_index, dataset.env_args, len(demos)


def build_model(overrides, env, instructions, args) -> ActorCritic:
    """A fresh model of the variant (seeded: every fit starts from the same trainable weights), its instruction
    table holding the dataset's instructions."""
    torch.manual_seed(args.seed)
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("config", overrides=["env=tabletop_push", "backbone=towers", "backbone.grounding_heads=4",
                                           f"backbone.hidden_size={args.width}", *overrides])
    model = ActorCritic.from_config(cfg, env.observation_space, env.action_space)
    model.backbone.instruction_texts = sorted(set(instructions))
    return model


@torch.no_grad()
def encode(model: ActorCritic, obs, instructions):
    """The frozen features of every frame (the same for every fit of a variant: its trainable layers do not
    reach them); when the towers train (``backbone.train_image_tower=true``, LoRA) the frames themselves,
    which the towers encode at every step."""
    backbone = model.backbone
    frames = {camera: torch.as_tensor(obs[camera]) for camera in backbone.cameras}
    frames["instruction_id"] = torch.as_tensor([backbone.instruction_texts.index(text) for text in instructions])
    if backbone.is_trainable:
        return frames
    pieces = [backbone.encode_frozen({key: value[i:i + 1024] for key, value in frames.items()})
              for i in range(0, len(instructions), 1024)]
    return {key: torch.cat([piece[key] for piece in pieces]) for key in pieces[0]}


def split_by_scene(errors: torch.Tensor, scene: torch.Tensor) -> tuple:
    """RMS (cm) of the per-scene mean error (a bias that holds over a whole episode, which a closed-loop policy
    cannot average away) and of what is left within each scene (frame-to-frame error: the object moves, the
    hand passes over it), for one target's x-y ``errors`` (metres, one row per frame of ``scene``)."""
    _, inverse, counts = torch.unique(scene, return_inverse=True, return_counts=True)
    means = torch.zeros(len(counts), 2, dtype=errors.dtype).index_add_(0, inverse, errors) / counts[:, None]
    bias = means[inverse]
    return 100 * bias.pow(2).sum(1).mean().sqrt().item(), 100 * (errors - bias).pow(2).sum(1).mean().sqrt().item()


def probe(label, model, features, encode_seconds, targets, train, heldout, scene, near, args):
    backbone = model.backbone
    width = backbone.grounded_tokens * args.width
    head = nn.Sequential(nn.Linear(width, 256), nn.ReLU(), nn.Linear(256, 4))
    columns = sum(TARGETS.values(), [])
    y = torch.as_tensor(targets[:, columns])
    mean, std = y[train].mean(0), y[train].std(0)
    y_norm = (y - mean) / std
    params = backbone.trainable_parameters() + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=args.lr)
    train_idx = torch.nonzero(torch.as_tensor(train)).flatten()
    valid_idx = torch.nonzero(torch.as_tensor(heldout)).flatten()

    def predict(idx):
        batch = {key: value[idx] for key, value in features.items()}
        tokens = backbone.project(backbone.encode_frozen(batch) if backbone.is_trainable else batch)
        return head(tokens.hidden[:, :backbone.grounded_tokens].flatten(1))

    start = time.perf_counter()
    for step in range(args.steps + 1):
        idx = train_idx[torch.randint(0, len(train_idx), (args.batch,))]
        loss = (predict(idx) - y_norm[idx]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            with torch.no_grad():
                errors = torch.cat([predict(valid_idx[i:i + 1024]) for i in range(0, len(valid_idx), 1024)])
                errors = errors * std + mean - y[valid_idx]  # metres
            # RMS, and the median and 90th percentile: a few confusions with another object weigh on the RMS
            # as much as a small error on every frame, and the two need different fixes.
            cells = []
            for k in range(len(TARGETS)):
                distance = 100 * errors[:, 2 * k:2 * k + 2].pow(2).sum(1).sqrt()
                cells.append(f"{distance.pow(2).mean().sqrt():.2f} ({distance.median():.2f}, "
                             f"{distance.quantile(0.9):.2f})")
            print(f"| {label} | {step} | {loss.item():.3f} | {' | '.join(cells)} | "
                  f"{encode_seconds:.0f} + {time.perf_counter() - start:.0f} |", flush=True)
    scenes = torch.as_tensor(scene)[valid_idx]
    parts = [split_by_scene(errors[:, 2 * k:2 * k + 2], scenes) for k in range(len(TARGETS))]
    print(f"  {label}, final held-out error split, cm (per-scene bias / within-scene): "
          + ", ".join(f"{name} {between:.2f} / {within:.2f}" for name, (between, within) in zip(TARGETS, parts)),
          flush=True)
    close = torch.as_tensor(near)[valid_idx]
    distance = 100 * errors[:, 0:2].pow(2).sum(1).sqrt()
    print(f"  {label}, named object's RMS error with the hand within {NEAR * 100:.0f} cm of it (x-y; "
          f"{close.float().mean():.0%} of the frames) / farther, cm: {distance[close].pow(2).mean().sqrt():.2f} / "
          f"{distance[~close].pow(2).mean().sqrt():.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar="LABEL [OVERRIDE ...]")
    parser.add_argument("--frame-stride", type=int, default=2, help="use every n-th frame of each demo")
    parser.add_argument("--heldout", type=float, default=0.15)
    parser.add_argument("--train-demos", type=int, nargs="+", default=[None],
                        help="fit on the first N demos (one probe per N; default: every non-held-out demo)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    register_configs()
    obs, instructions, targets, demo, env_args, demos = load(args.dataset, args.frame_stride)
    if targets is None:
        sys.exit(f"{args.dataset} has no obs/privileged: record it with env.privileged_obs=true")
    overrides = [f"env.{key}={json.dumps(env_args[key])}" for key in ("task", "cameras", "image_size")]
    with initialize_config_dir(config_dir=CONF, version_base=None):
        env = make_env(compose("config", overrides=["env=tabletop_push", *overrides]).env)
    first_heldout = int(round((1 - args.heldout) * demos))
    near = np.linalg.norm(obs["state"][:, :2] - targets[:, :2], axis=1) < NEAR  # state: hand xyz first
    print(f"{len(demo)} frames of {demos} demos ({(demo >= first_heldout).sum()} frames of the last "
          f"{args.heldout:.0%} held out); held-out error of the x-y position, cm\n")
    print("| variant | train demos | step | train loss (normalized) | named object, cm: RMS (median, 90th "
          "percentile) | goal, cm | seconds (encode + fit) |\n|---|---:|---:|---:|---:|---:|---:|")
    for label, *variant_overrides in args.variant:
        model = build_model(variant_overrides, env, instructions, args)
        start = time.perf_counter()
        features = encode(model, obs, instructions)
        encode_seconds = time.perf_counter() - start
        for train_demos in args.train_demos:
            count = first_heldout if train_demos is None else min(train_demos, first_heldout)
            train = np.where(demo >= first_heldout, False, demo < count)
            probe(f"{label} | {count}", build_model(variant_overrides, env, instructions, args), features,
                  encode_seconds, targets, train, demo >= first_heldout, demo, near, args)
    env.close()


if __name__ == "__main__":
    main()
