"""A scripted controller with privileged state for the tabletop tasks: proof that each success is reachable.

It reads the env's ``measures()`` (true positions), so it solves a task without looking at the image or the
instruction; tests use it to check every task's success condition can be met in the time limit.
"""

from __future__ import annotations

import numpy as np

from envs.tabletop.env import MAX_HAND_STEP, TabletopEnv
from envs.tabletop.tasks import push_geometry

CRUISE_HEIGHT = 0.09  # grasp-point height for moving over objects (fingertips clear a cube's top)
OPEN, CLOSED = -1.0, 1.0


def scripted_action(env: TabletopEnv) -> np.ndarray:
    """The next action (natural units, as ``env.action_space``) for the env's current task and state."""
    measures = env.measures()
    hand, target = measures.hand, measures.target
    if env.task.name == "reach":
        move_to, gripper = _over_then_down(hand, target), OPEN
    elif env.task.name == "lift":
        aligned = np.linalg.norm(hand[:2] - target[:2]) < 0.01 and hand[2] < target[2] + 0.01
        if measures.grasped:
            move_to, gripper = np.array([hand[0], hand[1], 0.2]), CLOSED
        elif aligned:
            move_to, gripper = hand, CLOSED  # close in place until both fingers touch
        else:
            move_to, gripper = _over_then_down(hand, target), OPEN
    else:  # push: get behind the object (seen from the zone), then drive through it towards the zone
        geometry = push_geometry(measures)
        if geometry.behind:
            move_to = geometry.hand_target(measures, -0.05)  # 5 cm beyond the object's centre
        else:
            move_to = _over_then_down(hand, geometry.hand_target(measures, 0.055))
        gripper = CLOSED
    step = np.clip(move_to - hand, -MAX_HAND_STEP, MAX_HAND_STEP)
    return np.array([*step, gripper], dtype=np.float32)


def beyond_recovery(env: TabletopEnv) -> bool:
    """The named object is off the table (below its top): no hand can bring it back, so there is no right
    action to show from here on."""
    return bool(env.measures().target[2] < 0.0)


def _over_then_down(hand: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Travel at cruise height until above ``goal``, then descend onto it (never sweeps through objects)."""
    if np.linalg.norm(hand[:2] - goal[:2]) > 0.015:
        return np.array([goal[0], goal[1], max(CRUISE_HEIGHT, goal[2])])
    return goal
