"""A Reacher that fails once, for fault-injection tests. Used as env.id=tests.faulty_env:FaultyReacher-v0 so
gymnasium imports this module (and its registration) inside forkserver workers too."""

import os
import signal
from pathlib import Path

import gymnasium as gym


class FaultyReacher(gym.Wrapper):
    """Raises (``mode="raise"``) or SIGKILLs its own process (``mode="kill"``) at its ``at_step``-th step, the
    first time any process reaches it (``marker`` records that; ``always=True`` fails every time)."""

    def __init__(self, mode: str, at_step: int, marker: str, always: bool = False, render_mode=None):
        super().__init__(gym.make("Reacher-v5", render_mode=render_mode))
        self.mode, self.at_step, self.marker, self.always, self.steps = mode, at_step, Path(marker), always, 0

    def step(self, action):
        self.steps += 1
        if self.steps == self.at_step and (self.always or not self.marker.exists()):
            self.marker.touch()
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected fault at step {self.steps}")
        return self.env.step(action)


gym.register("FaultyReacher-v0", entry_point=FaultyReacher, max_episode_steps=50)
