"""Demonstrations: roll out an env's scripted expert and write a robomimic-style HDF5 dataset; read one back.

The layout is robomimic's (https://robomimic.github.io/docs/datasets/overview.html), so its tools open ours:

    data/                   attrs: total (samples in all demos), env_args (JSON of the env config recorded on),
                            policy (only with vla-demos checkpoint=: JSON of the checkpoint that acted)
      demo_<i>/             attrs: num_samples, instruction, success, seed (the episode is reset(seed=seed)),
                            labelled (only with vla-demos unlabelled=true: false, the actions are the random
                            ones that ran, not labels to learn; BC masks them out)
        actions    (N, A)   float32, normalized to [-1, 1]: the expert's action in each state, what a policy
                            outputs; the env received exactly these unless executed_actions is there
        executed_actions (N, A)  only with checkpoint= or action_noise: what the env received (the policy's
                            action, or the expert's on the steps expert_mix gave to it; noise added)
        rewards    (N,)     float64
        dones      (N,)     int64, 1 on the step that ended the episode (terminated or truncated, or after
                            which the expert found it beyond recovery: a tabletop object off the table)
        obs/<key>  (N, ...) the observation each action was taken in: camera images uint8 (N, H, W, 3),
                            state float32 (N, S)
    mask/train, mask/valid  demo names (bytes): the split behaviour cloning trains and validates on

Unlike robomimic, ``next_obs`` and MuJoCo ``states`` are not stored: each demo replays exactly from its seed
and its executed actions.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import gymnasium as gym
import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from envs import make_env, make_vector_env
from envs.registry import batch_instructions, reset_to_next_episodes
from envs.experts import STATELESS_EXPERT_KINDS, check_has_expert
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
    # What the env received when it differs from ``actions`` (``vla-demos checkpoint=...``: the policy acted, the
    # expert's labels are the actions to learn); None: ``actions`` ran.
    executed_actions: Optional[np.ndarray] = None
    # False: a scene view (vla-demos unlabelled=true), its actions random, not labels to learn.
    labelled: bool = True

    @property
    def num_samples(self) -> int:
        return len(self.actions)


@dataclass
class DemoDataset:
    env_args: Dict[str, Any]  # the env config the demos were recorded on
    demos: Dict[str, Demo]  # by name, demo_0 first
    train: List[str]
    valid: List[str]


# ------------------------------------------------------------------------------------------------ recording
def _policy_actor(cfg, env_cfg):
    """``vla-demos checkpoint=CKPT``: a function from a batched observation to the checkpoint's actions, and the
    checkpoint's identity. ``None, None`` when the expert drives."""
    if cfg.checkpoint is None:
        if cfg.ensemble:
            raise ConfigError(f"ensemble={list(cfg.ensemble)} needs checkpoint=<run or checkpoint>: the ensemble is "
                              "checkpoint and these together")
        return None, None
    import torch

    from vla.evaluate import load_ensemble
    from vla.trainer import resolve_device, set_torch_threads

    if env_cfg.kind not in STATELESS_EXPERT_KINDS:
        raise ConfigError(f"checkpoint= labels the states a policy reaches with the scripted expert, which needs an "
                          f"expert that reads the current state alone (env kinds {list(STATELESS_EXPERT_KINDS)}); "
                          f"the {env_cfg.kind} experts are stage machines. Record expert demos (no checkpoint=)")
    set_torch_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)  # deterministic=false samples the policy's actions: the same file every time
    model, _, identity = load_ensemble(cfg.checkpoint, list(cfg.ensemble), resolve_device(cfg.device), env_cfg,
                                       cfg.deterministic)
    if model.actions_per_decision > 1:
        raise ConfigError(f"the policy of {cfg.checkpoint} acts in chunks of {model.actions_per_decision} actions; the "
                          "expert labels single steps, so checkpoint= needs a policy with policy.chunk_size=1")
    model.eval()

    @torch.no_grad()
    def act(obs: Dict[str, Any]) -> np.ndarray:
        return model.act(model.to_tensors(obs), deterministic=cfg.deterministic).action.cpu().numpy()

    return act, identity


def recorded_episodes(cfg, keys: List[str], policy: Optional[Callable[[Dict[str, Any]], np.ndarray]]
                      ) -> Iterator[Demo]:
    """Episodes from ``reset(seed=cfg.seed + i)``, i = 0, 1, ..., in that order, stepped ``cfg.num_envs`` at a
    time; observations under ``keys`` are kept. ``actions`` are always the scripted expert's for the state
    the episode is in. Without ``policy`` the expert's actions are also the ones executed. With one, the policy
    acts and, with probability ``cfg.expert_mix`` per step, the expert does instead (DAgger's mixture). With
    ``cfg.action_noise`` Gaussian noise is added to what runs (DART). With a policy or noise, what ran is kept
    as ``executed_actions``. An episode the expert finds beyond recovery (a tabletop object off
    the table) ends there, failed: the states after it have no right action to learn. With
    ``cfg.unlabelled`` uniform random actions run, no expert is asked, and the episodes are marked unlabelled."""
    num_envs = cfg.num_envs
    if num_envs < 1:
        raise ConfigError(f"num_envs={num_envs}; use 1 or more")
    if not 0.0 <= cfg.expert_mix <= 1.0:
        raise ConfigError(f"expert_mix={cfg.expert_mix} must lie in [0, 1] (the chance per step that the expert "
                          "acts instead of the policy)")
    if not cfg.action_noise >= 0.0:
        raise ConfigError(f"action_noise={cfg.action_noise} must be 0 (off) or a positive standard deviation in "
                          "normalized action units (about 0.05-0.3)")
    if cfg.unlabelled and (policy is not None or cfg.action_noise > 0):
        raise ConfigError("unlabelled=true records random actions: it takes neither checkpoint= nor action_noise")
    rng = np.random.default_rng(cfg.seed)
    keep_executed = policy is not None or cfg.action_noise > 0
    envs = make_vector_env(cfg.env, num_envs, autoreset=False, expert=not cfg.unlabelled)
    action_shape = (num_envs, *envs.single_action_space.shape)
    try:
        obs, _ = envs.reset(seed=[cfg.seed + i for i in range(num_envs)])
        attempt = list(range(num_envs))  # the attempt each env is playing
        steps: List[Dict[str, list]] = [defaultdict(list) for _ in range(num_envs)]
        instructions = batch_instructions(obs, num_envs)
        finished: Dict[int, Demo] = {}
        next_attempt = num_envs

        def end_episodes(ended: np.ndarray, success: np.ndarray) -> Dict[str, Any]:
            """Store the ended envs' episodes and start their next attempts; returns the new observations."""
            nonlocal next_attempt
            for i in np.flatnonzero(ended):
                record = steps[i]
                record["dones"][-1] = True  # also where the expert gave up before a time limit
                finished[attempt[i]] = Demo(
                    obs={key: np.stack(record[key]) for key in keys},
                    actions=np.stack(record["actions"]).astype(np.float32),
                    rewards=np.asarray(record["rewards"], dtype=np.float64),
                    dones=np.asarray(record["dones"], dtype=np.int64), instruction=instructions[i],
                    success=bool(success[i]), seed=cfg.seed + attempt[i],
                    executed_actions=np.stack(record["executed"]).astype(np.float32) if keep_executed else None,
                    labelled=not cfg.unlabelled)
                steps[i] = defaultdict(list)
            new_obs, _, next_attempt = reset_to_next_episodes(envs, ended, attempt, next_attempt, cfg.seed)
            new_instructions = batch_instructions(new_obs, num_envs)
            for i in np.flatnonzero(ended):
                instructions[i] = new_instructions[i]
            return new_obs

        next_out = 0
        while True:
            while next_out in finished:  # in attempt order, whatever order the envs finished them in
                yield finished.pop(next_out)
                next_out += 1
            if cfg.unlabelled:  # a scene view: random actions, nothing asked of an expert
                answers = list(rng.uniform(-1.0, 1.0, action_shape).astype(np.float32))
            else:
                answers = envs.call("expert_action")
            gave_up = np.array([answer is None for answer in answers])
            if gave_up.any():
                obs = end_episodes(gave_up, np.zeros(num_envs, dtype=bool))
                continue
            labels = np.stack(answers)
            executed = labels
            if policy is not None:
                executed = policy(obs)
                from_expert = rng.random(num_envs) < cfg.expert_mix
                executed[from_expert] = labels[from_expert]
            if cfg.action_noise > 0:  # a new array: the labels stay the expert's clean actions; float32 as stored
                noisy = executed + rng.normal(0.0, cfg.action_noise, executed.shape)
                executed = np.clip(noisy, -1.0, 1.0).astype(np.float32)
            for i in range(num_envs):
                for key in keys:
                    steps[i][key].append(obs[key][i])
                steps[i]["actions"].append(labels[i])
                steps[i]["executed"].append(executed[i])
            obs, reward, terminated, truncated, info = envs.step(executed)
            done = terminated | truncated
            for i in range(num_envs):
                steps[i]["rewards"].append(reward[i])
                steps[i]["dones"].append(done[i])
                if len(steps[i]["dones"]) >= MAX_EPISODE_STEPS and not done[i]:
                    raise ConfigError(f"an episode ran {MAX_EPISODE_STEPS} steps without ending; set "
                                      "env.max_episode_steps (the env has no time limit of its own)")
            if done.any():
                obs = end_episodes(done, np.asarray(info["success"], dtype=bool))
    finally:
        envs.close()


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
    if demo.executed_actions is not None:
        group.create_dataset("executed_actions", data=demo.executed_actions.astype(np.float32))
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
    if not demo.labelled:
        group.attrs["labelled"] = False


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
    """``vla-demos``: play episodes from seeds ``seed, seed + 1, ...`` until ``episodes`` are kept (only
    successful ones with ``only_successful``) or ``max_attempts`` ran out, and write them to ``path``: the
    scripted expert's episodes, or with ``policy`` a checkpoint's episodes labelled with the expert's actions
    (DAgger), or with ``unlabelled`` random-action scene views for the auxiliary loss. The file appears
    complete or not at all (written under a temporary name, then renamed)."""
    import h5py

    if cfg.episodes < 1:
        raise ConfigError(f"episodes={cfg.episodes}: record at least one demonstration")
    only_successful = cfg.only_successful if cfg.only_successful is not None else \
        cfg.checkpoint is None and not cfg.unlabelled
    max_attempts = cfg.max_attempts if cfg.max_attempts is not None else 2 * cfg.episodes + 10
    if not cfg.unlabelled:
        check_has_expert(cfg.env)  # an env without an expert fails here, before anything runs or is written
    policy, identity = _policy_actor(cfg, cfg.env)
    probe = make_env(cfg.env)
    keys = stored_keys(probe.observation_space, cfg.image_keys)
    probe.close()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    names: List[str] = []
    attempts = total = successes = 0
    episodes = recorded_episodes(cfg, keys, policy)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=cfg.episodes, desc="demos", unit="demo", disable=not cfg.progress, dynamic_ncols=True)
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            while len(names) < cfg.episodes and attempts < max_attempts:
                demo = next(episodes)
                attempts += 1
                successes += demo.success
                if only_successful and not demo.success:
                    continue
                name = f"demo_{len(names)}"
                write_demo(data.create_group(name), demo)
                names.append(name)
                total += demo.num_samples
                bar.update(1)
            bar.close()
            if not names:
                raise UserError(f"{'the policy' if policy else 'the expert'} succeeded in none of {attempts} "
                                "attempts on this env; nothing was written (only_successful=false keeps failed "
                                "episodes too)")
            data.attrs["total"] = total
            data.attrs["env_args"] = json.dumps(OmegaConf.to_container(cfg.env, resolve=True))
            if cfg.action_noise > 0:
                data.attrs["action_noise"] = float(cfg.action_noise)
            if cfg.unlabelled:
                data.attrs["unlabelled"] = True
            if identity is not None:
                policy_attrs = {"checkpoint": identity["path"], "global_step": identity["global_step"],
                                "expert_mix": cfg.expert_mix, "deterministic": cfg.deterministic}
                if "ensemble" in identity:
                    policy_attrs["ensemble"] = [{"checkpoint": member["path"], "global_step": member["global_step"]}
                                                for member in identity["ensemble"]]
                data.attrs["policy"] = json.dumps(policy_attrs)
            for split, members in split_names(names, cfg.valid_fraction, cfg.seed).items():
                f.create_dataset(f"mask/{split}", data=np.array(members, dtype="S"))
        os.replace(tmp, path)
    finally:
        episodes.close()  # closes the envs
        tmp.unlink(missing_ok=True)  # left only when recording failed
    return {"path": path, "demos": len(names), "attempts": attempts, "samples": total, "successes": successes}


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
                seed=int(attrs["seed"]) if "seed" in attrs else None,
                executed_actions=group["executed_actions"][()] if "executed_actions" in group else None,
                labelled=bool(attrs.get("labelled", True)))
        splits = {split: [_text(n) for n in f[f"mask/{split}"][()]] if f"mask/{split}" in f else None
                  for split in ("train", "valid")}
    unknown = sorted({n for members in splits.values() if members for n in members} - set(names))
    if unknown:
        raise DatasetError(f"dataset {path}: mask lists demos that are not in data/: {unknown[:5]}")
    train = splits["train"] if splits["train"] is not None else [n for n in names if n not in (splits["valid"] or [])]
    return DemoDataset(env_args=env_args, demos=demos, train=train, valid=splits["valid"] or [])


def merge_datasets(datasets: List[DemoDataset]) -> DemoDataset:
    """Several datasets as one (``dataset=[a.hdf5,b.hdf5]``: demos and a DAgger round's labelled episodes):
    demos renamed ``<k>/demo_<i>`` after the dataset's place in the list, splits joined. One dataset is
    returned as it is; ``env_args`` are the first's (each dataset is checked against the run's env first)."""
    if len(datasets) == 1:
        return datasets[0]
    demos, train, valid = {}, [], []
    for k, dataset in enumerate(datasets):
        demos.update({f"{k}/{name}": demo for name, demo in dataset.demos.items()})
        train += [f"{k}/{name}" for name in dataset.train]
        valid += [f"{k}/{name}" for name in dataset.valid]
    return DemoDataset(env_args=datasets[0].env_args, demos=demos, train=train, valid=valid)
