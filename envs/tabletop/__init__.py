"""Fast native MuJoCo tabletop tasks (reach, push, lift) built from primitive geometry; env kind ``tabletop``."""

from __future__ import annotations

from typing import Optional

import gymnasium as gym

from envs.registry import register_env_kind
from envs.tabletop.env import TabletopEnv
from envs.tabletop.tasks import TASKS
from envs.wrappers import SuccessInfo

__all__ = ["TASKS", "TabletopEnv", "build_tabletop_env"]


@register_env_kind("tabletop")
def build_tabletop_env(cfg, render_mode: Optional[str]) -> gym.Env:
    """A ``TabletopEnv`` from a ``TabletopEnvConfig``; ends the episode on the success the task reports when
    ``terminate_on_success`` is set."""
    env = TabletopEnv(
        task=cfg.task, num_objects=cfg.num_objects, cameras=list(cfg.cameras), use_camera=cfg.use_camera,
        image_size=cfg.image_size, video_size=cfg.video_size, reward=cfg.reward, time_penalty=cfg.time_penalty,
        placement_range=cfg.placement_range, instruction_mode=cfg.instruction_mode,
        privileged_state=cfg.privileged_state, privileged_obs=cfg.privileged_obs, render_mode=render_mode,
        max_objects=cfg.get("max_objects"), split=cfg.get("split", "all"),  # absent in older checkpoints
    )
    return SuccessInfo(env, distance_fn=None, threshold=0.0, terminate_on_success=cfg.terminate_on_success)
