"""The env contract, checked at the door: a custom env that breaks it fails with a message naming what it sent
and what its spaces declare, instead of a shape error deep inside a backbone (or silently broadcast actions).

``make_env`` applies ``EnvContract`` to every env, just outside the action normalization, so it sees the
policy's actions before they are clipped (``np.clip`` would broadcast a 1-element action to any size).

Checked once, when the env is made: the observation space is a ``Dict`` with a 1-D float ``state`` Box, camera
images as uint8 HxWx3 Boxes, optionally an ``instruction`` Text and a ``privileged`` 1-D float Box (simulator
state for an asymmetric critic; the actor never reads it). Checked on every ``reset``/``step``:
the observation is a dict holding exactly those keys, ``state`` with the declared shape and dtype, each image
with the declared shape and dtype uint8, the instruction a ``str``; ``info["success"]`` is present; the action
has the action space's shape. Only shapes, dtypes and types are compared (no pass over the data), so the
checks cost microseconds a step.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vla.errors import UserError


class EnvContractError(UserError):
    """An env's declared spaces or what it returns do not follow the env contract (see envs/wrappers.py)."""


def _is_camera_space(space: spaces.Space) -> bool:
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3 \
        and space.shape[-1] == 3


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"{repr(value)[:80]} of type {type(value).__name__}"


class EnvContract(gym.Wrapper):
    """Refuses observations and actions that break the env contract with an ``EnvContractError``."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.env_name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        declared = env.observation_space
        if not isinstance(declared, spaces.Dict) or "state" not in declared.spaces:
            raise EnvContractError(f"env {self.env_name!r} declares the observation space {declared}; the env "
                                   "contract needs a Dict with a 'state' vector (see envs/wrappers.py)")
        state = declared["state"]
        if not (isinstance(state, spaces.Box) and len(state.shape) == 1 and np.issubdtype(state.dtype, np.floating)):
            raise EnvContractError(f"env {self.env_name!r} declares observation 'state' as {state}; it must be "
                                   "a 1-D float Box")
        # key -> (shape, dtype) of every array in the observation; the instruction is checked on its own.
        self._arrays: Dict[str, Tuple[Tuple[int, ...], np.dtype]] = {"state": (state.shape, state.dtype)}
        for key, space in declared.spaces.items():
            if key == "state" or (key == "instruction" and isinstance(space, spaces.Text)):
                continue
            privileged = key == "privileged" and isinstance(space, spaces.Box) and len(space.shape) == 1 \
                and np.issubdtype(space.dtype, np.floating)
            if not (privileged or _is_camera_space(space)):
                raise EnvContractError(f"env {self.env_name!r} declares observation {key!r} as {space}; besides "
                                       "'state', an 'instruction' Text and a 'privileged' 1-D float Box (for the "
                                       "critic only), observations must be camera images (uint8 Box of shape "
                                       "HxWx3)")
            self._arrays[key] = (space.shape, space.dtype)
        self._has_instruction = "instruction" in declared.spaces
        self._num_keys = len(declared.spaces)
        if not isinstance(env.action_space, spaces.Box):
            raise EnvContractError(f"env {self.env_name!r} declares the action space {env.action_space}; only "
                                   "continuous (Box) action spaces are supported")
        self._action_shape = env.action_space.shape

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._check(obs, info, "reset()")
        return obs, info

    def step(self, action):
        if np.shape(action) != self._action_shape:
            raise EnvContractError(f"env {self.env_name!r} got an action of shape {np.shape(action)}; its action "
                                   f"space expects shape {self._action_shape}. Does the policy or checkpoint "
                                   "belong to another env?")
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._check(obs, info, "step()")
        return obs, reward, terminated, truncated, info

    def _check(self, obs: Any, info: Dict[str, Any], call: str) -> None:
        if not isinstance(obs, dict) or len(obs) != self._num_keys:
            self._refuse_keys(obs, call)
        for key, (shape, dtype) in self._arrays.items():
            value = obs.get(key)
            if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype != dtype:
                if key not in obs:
                    self._refuse_keys(obs, call)
                raise EnvContractError(f"env {self.env_name!r} {call} returned observation {key!r} as "
                                       f"{_describe(value)}; its observation space declares shape {shape} and "
                                       f"dtype {dtype}")
        if self._has_instruction and not isinstance(obs.get("instruction"), str):
            if "instruction" not in obs:
                self._refuse_keys(obs, call)
            raise EnvContractError(f"env {self.env_name!r} {call} returned observation 'instruction' as "
                                   f"{_describe(obs['instruction'])}; it must be a str")
        if "success" not in info:
            raise EnvContractError(f"env {self.env_name!r} {call} returned info without 'success'; the env "
                                   "contract needs info['success'] on every step")

    def _refuse_keys(self, obs: Any, call: str) -> None:
        declared = sorted(self.observation_space.spaces)
        if not isinstance(obs, dict):
            raise EnvContractError(f"env {self.env_name!r} {call} returned {_describe(obs)} as its observation; "
                                   f"the env contract needs a dict with keys {declared}")
        raise EnvContractError(f"env {self.env_name!r} {call} returned observation keys {sorted(obs)}; its "
                               f"observation space declares {declared}")
