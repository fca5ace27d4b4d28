"""Success checks for Gymnasium's MuJoCo manipulation tasks, which report no success of their own.

- ``Reacher-v5`` (``reacher_fingertip``): the fingertip body is within ``threshold`` metres of the target
  (default config 0.02 m: fingertip and target spheres, radii 0.01 m and 0.009 m, touch).
- ``Pusher-v5`` (``pusher_object``): the object body is within ``threshold`` metres of the goal centre
  (default config 0.08 m: the object centre lies on the goal disc, radius 0.08 m).
"""

from __future__ import annotations

from typing import Callable, Dict

import gymnasium as gym
import numpy as np


def _body_distance(env: gym.Env, body_a: str, body_b: str) -> float:
    unwrapped = env.unwrapped
    return float(np.linalg.norm(unwrapped.get_body_com(body_a) - unwrapped.get_body_com(body_b)))


SUCCESS_DISTANCES: Dict[str, Callable[[gym.Env], float]] = {
    "reacher_fingertip": lambda env: _body_distance(env, "fingertip", "target"),
    "pusher_object": lambda env: _body_distance(env, "object", "goal"),
}
