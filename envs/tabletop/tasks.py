"""The tabletop tasks: what the instruction asks, when it counts as done, and the shaped reward.

Each task reads a ``TaskMeasures`` (positions the env measured after the step) and returns success and a dense
reward. Dense rewards are costs in [-k, 0] plus a bonus of 1 on success: whether the episode ends on success
(terminate_on_success) or runs to the time limit, finishing sooner never earns less.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

from envs.tabletop.scene import OBJECT_HALF_SIZE, ZONE_RADIUS

REACH_DISTANCE = 0.04  # grasp point within this of the object's centre (fingers around or just above it)
PUSH_OFFSET = 0.045  # push: the hand's shaping target sits this far behind the object, seen from the zone
LIFT_HEIGHT = 0.1  # object centre above this height (lifted about 8 cm off the table)
SUCCESS_BONUS = 1.0


@dataclass(frozen=True)
class TaskMeasures:
    """Positions after a step: the grasp point, the named object, the goal zone centre (push only)."""

    hand: np.ndarray
    target: np.ndarray
    zone: np.ndarray
    grasped: bool


def _closeness_cost(distance: float) -> float:
    """0 at distance 0, approaching 1 from about 0.2 m: a gradient everywhere on the table."""
    return float(np.tanh(10.0 * distance))


@dataclass(frozen=True)
class Task:
    """A task name, its instruction paraphrases (the first is the canonical one), the paraphrases held out of
    the training split (``env.split``, see ``instruction_templates``), whether it places goal zones and whether
    its reward reads the grasp (a contact scan, skipped where unused)."""

    name: str
    paraphrases: Tuple[str, ...]
    heldout_paraphrases: Tuple[str, ...]
    uses_zone: bool = False
    uses_grasp: bool = False

    def instruction_templates(self, split: str) -> Tuple[str, ...]:
        """The paraphrases a split draws from: "train" never the held-out ones, "heldout" only those, "all"
        both (in that order, as before splits existed: the first stays the canonical one)."""
        if split == "train":
            return self.paraphrases
        if split == "heldout":
            return self.heldout_paraphrases
        return self.paraphrases + self.heldout_paraphrases

    def goal(self, measures: TaskMeasures) -> np.ndarray:
        """Where the named object should end up (privileged state for state-only training)."""
        if self.name == "push":
            return np.array([measures.zone[0], measures.zone[1], OBJECT_HALF_SIZE])
        if self.name == "lift":
            return np.array([measures.target[0], measures.target[1], LIFT_HEIGHT])
        return measures.target

    def evaluate(self, measures: TaskMeasures) -> Tuple[bool, float, float]:
        """(success, dense reward, goal distance) for the current measures."""
        reach = float(np.linalg.norm(measures.hand - measures.target))
        if self.name == "reach":
            success = reach < REACH_DISTANCE
            distance, cost = reach, _closeness_cost(reach)
        elif self.name == "push":
            # The hand is drawn to the spot behind the object (seen from the zone), where pushing moves the
            # object zone-wards; the object to the zone with a gentler slope, so moving it pays from anywhere on
            # the table. (Drawing the hand to the object itself paid for pushing it any way, and tanh(10 d) was
            # flat beyond 0.2 m: PPO from privileged state stayed at 0% success for 160k steps.)
            offset = measures.zone[:2] - measures.target[:2]
            distance = float(np.linalg.norm(offset))
            behind = np.array([*(measures.target[:2] - PUSH_OFFSET * offset / max(distance, 1e-6)),
                               OBJECT_HALF_SIZE])
            on_table = measures.target[2] < 2 * OBJECT_HALF_SIZE
            success = distance < ZONE_RADIUS and on_table
            cost = 0.5 * _closeness_cost(float(np.linalg.norm(measures.hand - behind))) + \
                float(np.tanh(5.0 * distance))
        else:  # lift
            distance = max(0.0, LIFT_HEIGHT - float(measures.target[2]))
            success = distance == 0.0
            cost = _closeness_cost(reach) + 0.5 * (not measures.grasped) + _closeness_cost(distance)
        return success, SUCCESS_BONUS * success - cost, distance


TASKS: Dict[str, Task] = {
    "reach": Task("reach", (
        "reach the {object}",
        "move the gripper to the {object}",
        "go to the {object}",
    ), heldout_paraphrases=(
        "touch the {object}",
    )),
    "push": Task("push", (
        "push the {object} to the {zone} zone",
        "slide the {object} into the {zone} area",
        "move the {object} onto the {zone} zone by pushing it",
    ), heldout_paraphrases=(
        "shove the {object} to the {zone} circle",
    ), uses_zone=True),
    "lift": Task("lift", (
        "lift the {object}",
        "pick up the {object}",
        "grasp the {object} and raise it",
    ), heldout_paraphrases=(
        "raise the {object} off the table",
    ), uses_grasp=True),
}
