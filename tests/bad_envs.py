"""Custom envs that break the env contract, for tests/test_bad_input.py.

Registered as gymnasium ids in a tests module (like tests/faulty_env.py), so ``env.id=tests.bad_envs:<Id>``
imports this module inside forkserver workers too:

- ``WrongStateSize-v0``: a Box-observation env for the ordinary ``gym`` kind whose observation has one
  element more than it declares (on ``reset`` or only on ``step``).
- ``CameraEnv-v0``: a Dict-observation env with a camera image and an instruction whose image shape, image dtype
  or instruction can be made wrong. The ``gym`` kind takes Box observations only, so it is built through the
  env kind ``dict_gym`` registered here (in-process use only: workers do not import this module first).
"""

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs import register_env_kind

STATE_SIZE = 4
IMAGE_SHAPE = (16, 16, 3)


class WrongStateSize(gym.Env):
    """Declares a 4-vector observation; returns 5 elements on ``reset`` (``bad_on="reset"``) or on ``step``."""

    def __init__(self, bad_on: str = "reset", render_mode=None):
        self.bad_on = bad_on
        self.observation_space = spaces.Box(-np.inf, np.inf, (STATE_SIZE,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _observation(self, call: str) -> np.ndarray:
        return np.zeros(STATE_SIZE + (call == self.bad_on), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._observation("reset"), {}

    def step(self, action):
        return self._observation("step"), 0.0, False, False, {}


class CameraEnv(gym.Env):
    """Declares ``state`` (4,) float32, ``image`` 16x16x3 uint8 and an ``instruction``; returns images of
    ``image_shape``/``image_dtype`` and ``instruction`` as given (the declared ones by default), leaves the
    observation key ``leave_out`` out, and ``info["success"]`` unless ``report_success`` is false."""

    def __init__(self, image_shape=IMAGE_SHAPE, image_dtype: str = "uint8", instruction="reach the red cube",
                 leave_out=None, report_success: bool = True, render_mode=None):
        self.image = np.zeros(tuple(image_shape), dtype=image_dtype)
        self.instruction = instruction
        self.leave_out = leave_out
        self.info = {"success": False} if report_success else {}
        self.observation_space = spaces.Dict({
            "state": spaces.Box(-np.inf, np.inf, (STATE_SIZE,), np.float32),
            "image": spaces.Box(0, 255, IMAGE_SHAPE, np.uint8),
            "instruction": spaces.Text(32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _observation(self):
        observation = {"state": np.zeros(STATE_SIZE, dtype=np.float32), "image": self.image,
                       "instruction": self.instruction}
        observation.pop(self.leave_out, None)
        return observation

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._observation(), dict(self.info)

    def step(self, action):
        return self._observation(), 0.0, False, False, dict(self.info)


gym.register("WrongStateSize-v0", entry_point=WrongStateSize, max_episode_steps=20)
gym.register("CameraEnv-v0", entry_point=CameraEnv, max_episode_steps=20)


@register_env_kind("dict_gym")
def build_dict_gym(cfg, render_mode):
    """A gymnasium id whose env already returns Dict observations and ``info["success"]`` (no adapters).
    gymnasium's passive env checker is off, so the framework's own contract check is what meets a bad env."""
    return gym.make(cfg.id, render_mode=render_mode, disable_env_checker=True, **dict(cfg.kwargs))
