"""Demonstrations: roll out an env's scripted expert and write a robomimic-style HDF5 dataset; read one back.

The layout is robomimic's (https://robomimic.github.io/docs/datasets/overview.html), so its tools open ours:

    data/                   attrs: total (samples in all demos), env_args (JSON of the env config recorded on)
      demo_<i>/             attrs: num_samples, instruction, success, seed (the episode is reset(seed=seed))
        actions    (N, A)   float32, normalized to [-1, 1]: exactly what the policy outputs and the env received
        rewards    (N,)     float64
        dones      (N,)     int64, 1 on the step that ended the episode (terminated or truncated)
        obs/<key>  (N, ...) the observation each action was taken in: camera images uint8 (N, H, W, 3),
                            state float32 (N, S)
    mask/train, mask/valid  demo names (bytes): the split behaviour cloning trains and validates on

Unlike robomimic, ``next_obs`` and MuJoCo ``states`` are not stored: each demo replays exactly from its seed
and actions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import gymnasium as gym
import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from envs import make_env
from vla.backbones.base import image_keys as camera_keys
from vla.errors import ConfigError, UserError

# An episode that has not ended by then has no time limit and an expert that cannot finish it.
MAX_EPISODE_STEPS = 10_000


class DatasetError(UserError):
    """A demonstrations file that is missing, not in the expected layout, or made for another env."""


@dataclass
class Demo:
    """One demonstration episode."""

    obs: Dict[str, np.ndarray]  # key -> (N, ...)
    actions: np.ndarray  # (N, A) normalized to [-1, 1]
    rewards: np.ndarray  # (N,)
    dones: np.ndarray  # (N,)
    instruction: Optional[str]
    success: bool
    seed: Optional[int]

    @property
    def num_samples(self) -> int:
        return len(self.actions)


@dataclass
class DemoDataset:
    env_args: Dict[str, Any]  # the env config the demos were recorded on
    demos: Dict[str, Demo]  # by name, demo_0 first
    train: List[str]
    valid: List[str]


# ------------------------------------------------------------------------------------------------- experts
def scripted_expert(env: gym.Env, env_cfg) -> Callable[[], np.ndarray]:
    """A fresh scripted expert for the episode ``env`` (made by ``make_env``) has just begun: each call returns
    the next action for the env's current state, normalized to [-1, 1] as the policy acts."""
    unwrapped = env.unwrapped
    if env_cfg.kind == "tabletop":
        from envs.tabletop.expert import scripted_action

        def natural_action() -> np.ndarray:
            return scripted_action(unwrapped)
    elif env_cfg.kind == "robosuite":
        from envs.robosuite_experts import make_expert

        expert = make_expert(env_cfg.task, env_cfg.controller)

        def natural_action() -> np.ndarray:
            return expert.act(unwrapped._env)
    else:
        name = env_cfg.get("id") or env_cfg.kind
        raise ConfigError(f"env {name!r} has no scripted expert; experts exist for every tabletop task "
                          "(env=tabletop_*) and robosuite Lift, Door, Stack, PickPlaceCan and NutAssemblyRound")
    low, high = unwrapped.action_space.low, unwrapped.action_space.high

    def act() -> np.ndarray:
        return np.clip(2.0 * (natural_action() - low) / (high - low) - 1.0, -1.0, 1.0).astype(np.float32)

    return act


def record_episode(env: gym.Env, env_cfg, seed: int, keys: List[str]) -> Demo:
    """One expert episode from ``reset(seed=seed)``; observations under ``keys`` are kept."""
    obs, _ = env.reset(seed=seed)
    act = scripted_expert(env, env_cfg)
    instruction = obs.get("instruction")
    observations: Dict[str, list] = {key: [] for key in keys}
    actions, rewards, dones = [], [], []
    for _ in range(MAX_EPISODE_STEPS):
        for key in keys:
            observations[key].append(obs[key])
        action = act()
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        rewards.append(reward)
        dones.append(terminated or truncated)
        if terminated or truncated:
            break
    else:
        raise ConfigError(f"an expert episode ran {MAX_EPISODE_STEPS} steps without ending; set "
                          "env.max_episode_steps (the env has no time limit of its own)")
    return Demo(obs={key: np.stack(values) for key, values in observations.items()},
                actions=np.stack(actions), rewards=np.asarray(rewards, dtype=np.float64),
                dones=np.asarray(dones, dtype=np.int64), instruction=instruction,
                success=bool(info["success"]), seed=seed)


def stored_keys(observation_space: gym.spaces.Dict, image_keys: Optional[List[str]]) -> List[str]:
    """The array observation keys a dataset keeps: the state, and the cameras in ``image_keys`` (None: all)."""
    all_cameras = camera_keys(observation_space)
    cameras = all_cameras
    if image_keys is not None:
        unknown = sorted(set(image_keys) - set(all_cameras))
        if unknown:
            raise ConfigError(f"image_keys {unknown} are not camera observations of this env; it has {all_cameras}")
        cameras = [key for key in all_cameras if key in image_keys]
    arrays = [key for key, space in observation_space.spaces.items()
              if isinstance(space, gym.spaces.Box) and key not in all_cameras]
    return arrays + cameras


# ------------------------------------------------------------------------------------------------- writing
def write_demo(group, demo: Demo) -> None:
    group.create_dataset("actions", data=demo.actions.astype(np.float32))
    group.create_dataset("rewards", data=demo.rewards)
    group.create_dataset("dones", data=demo.dones)
    for key, values in demo.obs.items():
        # Camera frames compress well and are read whole: gzip, one chunk per frame.
        options = {"compression": "gzip", "compression_opts": 4, "chunks": (1, *values.shape[1:])} \
            if values.dtype == np.uint8 else {}
        group.create_dataset(f"obs/{key}", data=values, **options)
    group.attrs["num_samples"] = demo.num_samples
    group.attrs["success"] = demo.success
    if demo.instruction is not None:
        group.attrs["instruction"] = demo.instruction
    if demo.seed is not None:
        group.attrs["seed"] = demo.seed


def split_names(names: List[str], valid_fraction: float, seed: int) -> Dict[str, List[str]]:
    """A seeded held-out share of the demos (at least one, and never all of them, when the share is > 0)."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ConfigError(f"valid_fraction={valid_fraction} must lie in [0, 1)")
    num_valid = int(round(valid_fraction * len(names)))
    if valid_fraction > 0 and len(names) >= 2:
        num_valid = min(max(num_valid, 1), len(names) - 1)
    valid = set(np.random.default_rng(seed).permutation(len(names))[:num_valid].tolist())
    return {"train": [n for i, n in enumerate(names) if i not in valid],
            "valid": [n for i, n in enumerate(names) if i in valid]}


def record_demos(cfg, path: Path) -> Dict[str, Any]:
    """``vla-demos``: attempt expert episodes from seeds ``seed, seed + 1, ...`` until ``episodes`` are kept
    (only successful ones with ``only_successful``) or ``max_attempts`` ran out, and write them to ``path``.
    The file appears complete or not at all (written under a temporary name, then renamed)."""
    import h5py

    if cfg.episodes < 1:
        raise ConfigError(f"episodes={cfg.episodes}: record at least one demonstration")
    max_attempts = cfg.max_attempts if cfg.max_attempts is not None else 2 * cfg.episodes + 10
    env = make_env(cfg.env)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        keys = stored_keys(env.observation_space, cfg.image_keys)
        scripted_expert(env, cfg.env)  # an env without an expert fails here, before anything is written
        path.parent.mkdir(parents=True, exist_ok=True)
        names: List[str] = []
        attempts = total = 0
        bar = tqdm(total=cfg.episodes, desc="demos", unit="demo", disable=not cfg.progress, dynamic_ncols=True)
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            while len(names) < cfg.episodes and attempts < max_attempts:
                demo = record_episode(env, cfg.env, cfg.seed + attempts, keys)
                attempts += 1
                if cfg.only_successful and not demo.success:
                    continue
                name = f"demo_{len(names)}"
                write_demo(data.create_group(name), demo)
                names.append(name)
                total += demo.num_samples
                bar.update(1)
            bar.close()
            if not names:
                raise UserError(f"the expert succeeded in none of {attempts} attempts on this env; nothing was "
                                "written (only_successful=false keeps failed episodes too)")
            data.attrs["total"] = total
            data.attrs["env_args"] = json.dumps(OmegaConf.to_container(cfg.env, resolve=True))
            for split, members in split_names(names, cfg.valid_fraction, cfg.seed).items():
                f.create_dataset(f"mask/{split}", data=np.array(members, dtype="S"))
        os.replace(tmp, path)
    finally:
        env.close()
        tmp.unlink(missing_ok=True)  # left only when recording failed
    return {"path": path, "demos": len(names), "attempts": attempts, "samples": total}


# ------------------------------------------------------------------------------------------------- reading
def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_dataset(path: str | os.PathLike) -> DemoDataset:
    """Every demo of a robomimic-style HDF5 file, in order, with its train/valid split (no ``mask`` group:
    all demos train)."""
    import h5py

    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"dataset {path} does not exist; record one with vla-demos env=<env> output={path}")
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise DatasetError(f"dataset {path} is not an HDF5 file ({error})") from error
    with f:
        if "data" not in f or not len(f["data"]):
            raise DatasetError(f"dataset {path} has no data/demo_<i> groups (robomimic layout expected)")
        env_args = json.loads(_text(f["data"].attrs.get("env_args", "{}")))
        names = sorted(f["data"], key=lambda name: (len(name), name))  # demo_2 before demo_10
        demos = {}
        for name in names:
            group = f["data"][name]
            missing = [key for key in ("actions", "rewards", "dones", "obs") if key not in group]
            if missing:
                raise DatasetError(f"dataset {path}: data/{name} lacks {missing}")
            attrs = group.attrs
            demos[name] = Demo(
                obs={key: group["obs"][key][()] for key in group["obs"]},
                actions=group["actions"][()], rewards=group["rewards"][()], dones=group["dones"][()],
                instruction=_text(attrs["instruction"]) if "instruction" in attrs else None,
                success=bool(attrs.get("success", True)),
                seed=int(attrs["seed"]) if "seed" in attrs else None)
        splits = {split: [_text(n) for n in f[f"mask/{split}"][()]] if f"mask/{split}" in f else None
                  for split in ("train", "valid")}
    unknown = sorted({n for members in splits.values() if members for n in members} - set(names))
    if unknown:
        raise DatasetError(f"dataset {path}: mask lists demos that are not in data/: {unknown[:5]}")
    train = splits["train"] if splits["train"] is not None else [n for n in names if n not in (splits["valid"] or [])]
    return DemoDataset(env_args=env_args, demos=demos, train=train, valid=splits["valid"] or [])
