"""Scripted experts behind one wrapper: ``make_env(cfg, expert=True)`` gives an env whose ``expert_action()``
returns the expert's next action for the env's current state, normalized to [-1, 1] as a policy acts.

Every expert reads the simulator's true positions, never the camera. Because the method is reached through
the wrappers (``env.get_wrapper_attr``), a vector env's ``call("expert_action")`` asks every worker's env,
which is how ``vla-demos checkpoint=...`` labels the states a policy reaches (DAgger).
"""

from __future__ import annotations

from typing import Callable, Optional

import gymnasium as gym
import numpy as np

from vla.errors import ConfigError

# Experts whose action depends on the current state alone, so they can label any state, also states their own
# actions would never reach. The robosuite experts are stage machines (over the object, down, grasp, lift):
# once a policy drops the cube, the stage they are in no longer fits the state.
STATELESS_EXPERT_KINDS = ("tabletop",)


def check_has_expert(env_cfg) -> None:
    """ConfigError, naming the envs that have one, unless ``env_cfg`` has a scripted expert."""
    if env_cfg.kind == "robosuite":
        from envs.robosuite_experts import make_expert

        make_expert(env_cfg.task, env_cfg.controller)  # raises for a task or controller without one
    elif env_cfg.kind != "tabletop":
        name = env_cfg.get("id") or env_cfg.kind
        raise ConfigError(f"env {name!r} has no scripted expert; experts exist for every tabletop task "
                          "(env=tabletop_*) and robosuite Lift, Door, Stack, PickPlaceCan and NutAssemblyRound")


def _natural_expert(env: gym.Env, env_cfg) -> Callable[[], Optional[np.ndarray]]:
    """A fresh expert for the episode ``env`` has just begun: each call returns its next action in the env's
    natural units (``env.unwrapped.action_space``), or None where no action can help any more."""
    unwrapped = env.unwrapped
    if env_cfg.kind == "robosuite":
        from envs.robosuite_experts import make_expert

        expert = make_expert(env_cfg.task, env_cfg.controller)
        return lambda: expert.act(unwrapped._env)
    from envs.tabletop.expert import beyond_recovery, scripted_action

    return lambda: None if beyond_recovery(unwrapped) else scripted_action(unwrapped)


class ScriptedExpert(gym.Wrapper):
    """Keeps the env's scripted expert in step with its episodes (a fresh one on every reset) and answers
    ``expert_action()``: the expert's next action for the current state, normalized to [-1, 1], or None once
    the episode is beyond recovery (a tabletop object knocked off the table), where no action is right."""

    def __init__(self, env: gym.Env, env_cfg):
        super().__init__(env)
        check_has_expert(env_cfg)
        self._env_cfg = env_cfg
        self._natural: Optional[Callable[[], Optional[np.ndarray]]] = None
        space = env.unwrapped.action_space
        self._low, self._high = space.low, space.high

    def reset(self, **kwargs):
        result = self.env.reset(**kwargs)
        self._natural = _natural_expert(self.env, self._env_cfg)
        return result

    def expert_action(self) -> Optional[np.ndarray]:
        if self._natural is None:
            raise RuntimeError("expert_action() before the first reset()")
        action = self._natural()
        if action is None:
            return None
        return np.clip(2.0 * (action - self._low) / (self._high - self._low) - 1.0, -1.0, 1.0).astype(np.float32)
