"""Wrappers that put any environment under the framework's env contract.

Contract (DESIGN.md): gymnasium API, ``Dict`` observation with ``state`` (float32 proprio) and optionally
camera images (uint8 HxWx3) and ``instruction`` (str); ``info["success"]`` on every step; ``terminated`` and
``truncated`` kept apart; actions normalized to [-1, 1] (the env's own bounds are mapped here and nowhere else).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import ClipAction, RescaleAction, TimeLimit

from vla.errors import ConfigError


def camera_image_key(camera: str, index: int) -> str:
    """The env contract's observation key for the ``index``-th camera: the first is ``image``, further cameras
    are ``<name>_image``."""
    return "image" if index == 0 else f"{camera}_image"


class BoxToDictObservation(gym.ObservationWrapper):
    """Presents a Box-observation env's observation as ``{"state": float32 vector}``."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        if not isinstance(env.observation_space, spaces.Box):
            raise ConfigError(
                f"the generic gym path needs a Box observation space, got {env.observation_space}; "
                "write an env builder in envs/ that returns a Dict observation with a 'state' key"
            )
        box = env.observation_space
        self.observation_space = spaces.Dict(
            {"state": spaces.Box(-np.inf, np.inf, shape=(int(np.prod(box.shape)),), dtype=np.float32)}
        )

    def observation(self, observation):
        return {"state": np.asarray(observation, dtype=np.float32).reshape(-1)}


class SuccessInfo(gym.Wrapper):
    """Adds ``info["success"]`` from a distance function and optionally terminates on success.

    ``info["goal_distance"]`` carries the distance too, so logs can show how close failures came.
    """

    def __init__(
        self,
        env: gym.Env,
        distance_fn: Optional[Callable[[gym.Env], float]],
        threshold: float,
        terminate_on_success: bool,
    ):
        super().__init__(env)
        self._distance_fn = distance_fn
        self._threshold = threshold
        self._terminate_on_success = terminate_on_success

    def _annotate(self, info: Dict[str, Any]) -> bool:
        if "success" in info:  # the task reports its own success
            success = bool(info["success"])
        elif self._distance_fn is None:
            success = False
        else:
            distance = self._distance_fn(self.env)
            info["goal_distance"] = distance
            success = distance < self._threshold
        info["success"] = success
        return success

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._annotate(info)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._annotate(info) and self._terminate_on_success:
            terminated = True
        return obs, reward, terminated, truncated, info


class Snapshot(gym.Wrapper):
    """Outermost wrapper: captures and restores the exact simulator state for bit-exact resume.

    Supported for MuJoCo-based envs (physics integration state via ``mj_getState``) together with the env's
    random generator and the time-limit counter. Per-episode state outside ``mjData`` (which object is the
    target, the instruction, model fields such as colours set per episode) comes from the env's optional
    ``get_task_state()`` (a JSON-serializable dict, or None when the env cannot be captured exactly) and goes
    back through ``set_task_state(dict)``. ``get_snapshot`` returns None for envs it cannot capture; the
    trainer then resets those envs on resume (and says so). ``vector_index`` is this env's place in its vector
    env, so one broadcast ``restore_snapshot(all_snapshots)`` call restores every worker.
    """

    def __init__(self, env: gym.Env, vector_index: int = 0):
        super().__init__(env)
        self.vector_index = vector_index

    def _time_limits(self) -> List[TimeLimit]:
        limits, env = [], self.env
        while isinstance(env, gym.Wrapper):
            if isinstance(env, TimeLimit):
                limits.append(env)
            env = env.env
        return limits

    def get_snapshot(self) -> Optional[Dict[str, Any]]:
        unwrapped = self.env.unwrapped
        model, data = getattr(unwrapped, "model", None), getattr(unwrapped, "data", None)
        if not isinstance(model, mujoco.MjModel) or not isinstance(data, mujoco.MjData):
            return None
        get_task_state = getattr(unwrapped, "get_task_state", None)
        task_state = get_task_state() if get_task_state is not None else {}
        if task_state is None:
            return None
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        physics = np.empty(mujoco.mj_stateSize(model, spec), dtype=np.float64)
        mujoco.mj_getState(model, data, physics, spec)
        return {
            "physics": physics.tolist(),
            "np_random": unwrapped.np_random.bit_generator.state,
            "elapsed_steps": [limit._elapsed_steps for limit in self._time_limits()],
            "task_state": task_state,
        }

    def restore_snapshot(self, snapshots: List[Dict[str, Any]]) -> None:
        snapshot = snapshots[self.vector_index]
        unwrapped = self.env.unwrapped
        physics = np.asarray(snapshot["physics"], dtype=np.float64)
        mujoco.mj_setState(unwrapped.model, unwrapped.data, physics, mujoco.mjtState.mjSTATE_INTEGRATION)
        if hasattr(unwrapped, "set_task_state"):
            unwrapped.set_task_state(snapshot["task_state"])
        # Positions, contacts and sensors derived from the restored state (and from any model fields the task
        # state set), so observations and success checks read before the next step are right.
        mujoco.mj_forward(unwrapped.model, unwrapped.data)
        unwrapped.np_random.bit_generator.state = snapshot["np_random"]
        for limit, elapsed in zip(self._time_limits(), snapshot["elapsed_steps"]):
            limit._elapsed_steps = elapsed


class ActionChunk(gym.Wrapper):
    """Runs a chunk of ``steps`` consecutive actions (one flattened action of ``steps * action_dim``) as one step.

    The chunk stops early when the episode ends (the rest of it is dropped, never run in the next episode).
    The step's reward is the discounted sum ``sum_j gamma^j r_j`` over the steps run, so one PPO transition
    per chunk stays an exact semi-MDP step; ``info["chunk_steps"]`` says how many ran (the transition's
    discount is ``gamma ** chunk_steps``) and ``info["chunk_return"]`` is their undiscounted sum, for episode
    returns. With ``render_mode="rgb_array"`` the frames after every step but the chunk's last are in
    ``info["chunk_frames"]``, so videos show every step.
    """

    def __init__(self, env: gym.Env, steps: int, gamma: float):
        super().__init__(env)
        box = env.action_space
        if len(box.shape) != 1:
            raise ConfigError(f"action chunks need a flat action space, got shape {box.shape}")
        self.steps, self.gamma = steps, gamma
        self.action_space = spaces.Box(np.tile(box.low, steps).astype(box.dtype),
                                       np.tile(box.high, steps).astype(box.dtype), dtype=box.dtype)

    def step(self, action):
        actions = np.asarray(action).reshape(self.steps, -1)
        discounted, undiscounted, frames = 0.0, 0.0, []
        for j, single in enumerate(actions):
            obs, reward, terminated, truncated, info = self.env.step(single)
            discounted += self.gamma ** j * float(reward)
            undiscounted += float(reward)
            if terminated or truncated:
                break
            if self.render_mode == "rgb_array" and j < self.steps - 1:
                frames.append(self.env.render())
        info = {**info, "chunk_steps": j + 1, "chunk_return": undiscounted}
        if frames:
            info["chunk_frames"] = frames
        return obs, discounted, terminated, truncated, info


def chunk_stats(info: Dict[str, Any], reward: np.ndarray):
    """(env steps run, undiscounted reward) per env from a vector step of ``ActionChunk`` envs (1 and
    ``reward`` where an env reported no chunk). Under same-step autoreset an ended env's step info is in
    ``info["final_info"]`` (its top-level info is the reset's)."""
    steps = np.ones(len(reward), dtype=np.int64)
    returns = np.asarray(reward, dtype=np.float64).copy()
    for source in (info, info.get("final_info", {})):
        if "chunk_steps" in source:
            mask = np.asarray(source.get("_chunk_steps", np.ones(len(reward), dtype=bool)), dtype=bool)
            steps[mask] = np.asarray(source["chunk_steps"])[mask]
            returns[mask] = np.asarray(source["chunk_return"])[mask]
    return steps, returns


def normalize_actions(env: gym.Env) -> gym.Env:
    """The one place where the env's action bounds are mapped: the policy acts in [-1, 1]^d.

    Actions outside [-1, 1] (a Gaussian sample) are clipped before rescaling to the env's [low, high].
    """
    if not isinstance(env.action_space, spaces.Box):
        raise ConfigError(f"only continuous (Box) action spaces are supported, got {env.action_space}")
    if np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0):
        return ClipAction(env)
    box = env.action_space  # bounds in the space's own dtype (float64 bounds on a float32 space warn)
    low, high = np.full(box.shape, -1.0, dtype=box.dtype), np.full(box.shape, 1.0, dtype=box.dtype)
    return ClipAction(RescaleAction(env, low, high))
