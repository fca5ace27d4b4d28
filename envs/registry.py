"""Env registry: ``make_env(cfg)`` and ``make_vector_env(cfg, ...)``, used by training and evaluation alike.

An env builder is registered under a config ``kind`` and turns that kind's config into a gymnasium env that
obeys the env contract (see ``envs.wrappers``). ``make_env`` adds the wrappers every env gets.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import gymnasium as gym
import numpy as np

from envs.contract import EnvContract
from envs.experts import ScriptedExpert
from envs.gl import load_triton_before_gl
from envs.wrappers import ActionChunk, BoxToDictObservation, Snapshot, SuccessInfo, normalize_actions
from vla.errors import ConfigError

EnvBuilder = Callable[[Any, Optional[str]], gym.Env]
_BUILDERS: Dict[str, EnvBuilder] = {}


def register_env_kind(kind: str) -> Callable[[EnvBuilder], EnvBuilder]:
    """Decorator: ``@register_env_kind("tabletop") def build(cfg, render_mode) -> gym.Env``."""

    def decorator(builder: EnvBuilder) -> EnvBuilder:
        _BUILDERS[kind] = builder
        return builder

    return decorator


def env_kinds() -> list:
    return sorted(_BUILDERS)


@register_env_kind("gym")
def _build_gym(cfg, render_mode: Optional[str]) -> gym.Env:
    from envs.gym_tasks import SUCCESS_DISTANCES

    if cfg.success is not None and cfg.success not in SUCCESS_DISTANCES:
        raise ConfigError(
            f"env.success={cfg.success!r} is not a known success check; choose one of "
            f"{sorted(SUCCESS_DISTANCES)} or null"
        )
    try:
        env = gym.make(cfg.id, render_mode=render_mode, **dict(cfg.kwargs))
    except gym.error.Error as error:
        raise ConfigError(f"env.id={cfg.id!r} could not be made by gymnasium: {error}") from error
    env = BoxToDictObservation(env)
    distance_fn = SUCCESS_DISTANCES.get(cfg.success) if cfg.success else None
    return SuccessInfo(env, distance_fn, cfg.success_threshold, cfg.terminate_on_success)


def make_env(cfg, render_mode: Optional[str] = None, vector_index: int = 0, action_chunk: int = 1,
             gamma: float = 1.0, expert: bool = False) -> gym.Env:
    """One environment under the env contract, with actions normalized to [-1, 1]. ``action_chunk`` > 1: one
    step runs that many actions (``ActionChunk``, reward discounted by ``gamma`` within the chunk).
    ``expert``: the env's scripted expert answers ``env.get_wrapper_attr("expert_action")()`` with its next
    action for the current state (``envs.experts.ScriptedExpert``; single-step actions only)."""
    load_triton_before_gl()
    if cfg.kind not in _BUILDERS:
        raise ConfigError(f"env.kind={cfg.kind!r} is not registered; known kinds: {env_kinds()}")
    env = _BUILDERS[cfg.kind](cfg, render_mode)
    if cfg.max_episode_steps is not None:
        env = TimeLimitOverride(env, cfg.max_episode_steps)
    env = EnvContract(normalize_actions(env))
    if expert:
        if action_chunk > 1:
            raise ConfigError("the scripted expert labels single env steps, not action chunks of "
                              f"{action_chunk}; use a policy with policy.chunk_size=1")
        env = ScriptedExpert(env, cfg)
    if action_chunk > 1:
        env = ActionChunk(env, action_chunk, gamma)
    return Snapshot(env, vector_index)


class TimeLimitOverride(gym.wrappers.TimeLimit):
    """Truncates at ``env.max_episode_steps`` (counts alongside any limit the env already has)."""


_WORKER_STATE: Dict[str, Any] = {}


def release_build_memory() -> None:
    """Hand back to the OS what building an env left behind in this process: MuJoCo's process-wide asset cache
    (robosuite Lift's decoded meshes and textures, 89 MB, kept to speed up the next compile, which a worker's one
    env does not do unless it hard-resets) and the heap the compile freed (glibc's ``malloc_trim``): about 220 of
    a robosuite Lift camera worker's 800 MB (``experiments/worker_memory.py``)."""
    mujoco = sys.modules.get("mujoco")
    if mujoco is not None:
        mujoco.mj_clearCache(mujoco.mj_getCache())
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        pass


def _worker_thunk(cfg, render_mode: Optional[str], vector_index: int, action_chunk: int,
                  gamma: float, expert: bool) -> Callable[[], gym.Env]:
    def thunk() -> gym.Env:
        in_worker = multiprocessing.parent_process() is not None
        if in_worker:
            # In a worker process: one BLAS/OpenMP thread each, so N workers on N cores do not oversubscribe.
            from threadpoolctl import threadpool_limits

            _WORKER_STATE["thread_limits"] = threadpool_limits(1)
            os.environ["OMP_NUM_THREADS"] = "1"
            # Ctrl-C reaches the whole process group: the trainer decides how to stop, workers keep serving.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        os.environ.setdefault("MUJOCO_GL", "egl")
        env = make_env(cfg, render_mode, vector_index, action_chunk, gamma, expert)
        if in_worker:
            release_build_memory()  # one env per worker: nothing else here compiles a model
        return env

    return thunk


def make_vector_env(cfg, num_envs: int, render_mode: Optional[str] = None, autoreset: bool = True,
                    action_chunk: int = 1, gamma: float = 1.0, first_index: int = 0,
                    force_async: bool = False, expert: bool = False) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``make_env(cfg, action_chunk=..., gamma=..., expert=...)``, with vector indices
    from ``first_index`` (``SplitVectorEnv``'s second group continues the first group's numbering).

    Async workers are started with ``forkserver`` (a robosuite camera env created in a ``fork``ed worker hung
    on these machines); sync when ``cfg.vector_mode == "sync"`` or ``num_envs == 1`` (unless ``force_async``).
    Autoreset happens within the step that ends an episode, with the final observation in ``info["final_obs"]`` so the trainer can
    bootstrap from V(final observation) on truncation. ``autoreset=False`` leaves resets to the caller
    (evaluation resets each finished env with the seed of its next episode).
    """
    if cfg.vector_mode not in ("async", "sync"):
        raise ConfigError(f"env.vector_mode={cfg.vector_mode!r}; use 'async' or 'sync'")
    thunks = [_worker_thunk(cfg, render_mode, first_index + i, action_chunk, gamma, expert)
              for i in range(num_envs)]
    mode = gym.vector.AutoresetMode
    autoreset_mode = mode.SAME_STEP if autoreset else mode.DISABLED
    if (num_envs == 1 and not force_async) or cfg.vector_mode == "sync":
        return gym.vector.SyncVectorEnv(thunks, autoreset_mode=autoreset_mode)
    return gym.vector.AsyncVectorEnv(thunks, context="forkserver", autoreset_mode=autoreset_mode, shared_memory=False)


def reset_to_next_episodes(envs: gym.vector.VectorEnv, done: np.ndarray, episode_of: List[int], next_episode: int,
                           seed: int) -> Tuple[Dict[str, Any], Dict[str, Any], int]:
    """Episodes numbered in order over a vector env without autoreset: each env flagged in ``done`` starts the
    next episode, ``next_episode``, ``next_episode + 1``, ..., from ``reset(seed=seed + episode)``, and
    ``episode_of`` (the episode each env plays) is updated in place. Returns the new observations and infos
    (the other envs' unchanged) and the next episode not yet started."""
    reset_seeds: List[Optional[int]] = [None] * len(episode_of)
    for i in np.flatnonzero(done):
        episode_of[i], reset_seeds[i] = next_episode, seed + next_episode
        next_episode += 1
    obs, info = envs.reset(seed=reset_seeds, options={"reset_mask": done})
    return obs, info, next_episode


def batch_instructions(obs: Dict[str, Any], num_envs: int) -> List[Optional[str]]:
    """Each env's instruction in a batched observation (None for envs without instructions)."""
    if "instruction" in obs:
        return [str(text) for text in obs["instruction"]]
    return [None] * num_envs


def concat_obs(parts: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Batched observation dicts of consecutive env groups -> one (text fields are tuples)."""
    return {key: tuple(x for part in parts for x in part[key]) if isinstance(parts[0][key], tuple)
            else np.concatenate([part[key] for part in parts]) for key in parts[0]}


class SplitVectorEnv:
    """``num_envs`` envs as two async vector envs (the groups), so one group steps while the policy infers for
    the other: the trainer's rollout overlaps env stepping with inference (``overlap_envs=true``).

    Env ``i`` keeps its place: group 0 holds envs ``0..n0-1``, group 1 the rest, seeded and indexed as one
    vector env would be (``reset(seed=s)`` gives env ``i`` seed ``s + i``; ``call`` concatenates the groups'
    results, and broadcast ``restore_snapshot`` calls find each env's snapshot by its index). Stepping goes
    through the groups' own ``step_async``/``step_wait``; ``slices`` says which envs each group holds.
    """

    def __init__(self, cfg, num_envs: int, action_chunk: int = 1, gamma: float = 1.0):
        if num_envs < 2 or cfg.vector_mode != "async":
            raise ConfigError(f"overlap_envs=true needs at least 2 envs in async workers (num_envs={num_envs}, "
                              f"env.vector_mode={cfg.vector_mode!r}); set num_envs>=2 and env.vector_mode=async, "
                              f"or overlap_envs=false")
        first = num_envs // 2
        self.num_envs = num_envs
        self.slices = [slice(0, first), slice(first, num_envs)]
        self.groups: List[gym.vector.VectorEnv] = []
        try:
            for part in self.slices:
                self.groups.append(make_vector_env(cfg, part.stop - part.start, action_chunk=action_chunk,
                                                   gamma=gamma, first_index=part.start, force_async=True))
        except BaseException:
            self.close()
            raise
        self.single_observation_space = self.groups[0].single_observation_space
        self.single_action_space = self.groups[0].single_action_space

    def reset(self, seed: Optional[int] = None):
        results = [group.reset(seed=None if seed is None else seed + part.start)
                   for group, part in zip(self.groups, self.slices)]
        return concat_obs([obs for obs, _ in results]), [info for _, info in results]

    def call(self, name: str, *args, **kwargs) -> tuple:
        return tuple(result for group in self.groups for result in group.call(name, *args, **kwargs))

    def close(self, **kwargs) -> None:
        for group in self.groups:
            try:
                group.close(**kwargs)
            except Exception:  # a dead worker's pipes are broken already; close the other group regardless
                pass

# Env kinds defined in their own modules register themselves on import (robosuite itself loads lazily).
import envs.robosuite_env  # noqa: E402,F401
import envs.tabletop  # noqa: E402,F401
