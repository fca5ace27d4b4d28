"""The tabletop tasks: what the instruction asks, when it counts as done, and the shaped reward.

Each task reads a ``TaskMeasures`` (positions the env measured after the step) and returns success and a dense
reward. Dense rewards are costs in [-k, 0] plus a bonus of 1 on success: whether the episode ends on success
(terminate_on_success) or runs to the time limit, finishing sooner never earns less.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

from envs.tabletop.scene import HAND_RANGE, OBJECT_HALF_SIZE, TABLE_HALF_SIZE, ZONE_RADIUS

REACH_DISTANCE = 0.04  # grasp point within this of the object's centre (fingers around or just above it)
# Push shaping (see ``Task.evaluate``): where the hand is drawn, measured back from the named object's centre
# along the zone-to-object line. The approach point keeps the hand clear of the object; the contact point lies
# inside touching range (half-side 0.02 m plus about 0.011 m of closed fingers), so a hand reaching for it pushes
# the object, and the point moves on as the object does.
PUSH_APPROACH_OFFSET = 0.045
PUSH_CONTACT_OFFSET = 0.025
# Behind the object on its line to the zone (the scripted expert pushes from there too): at least this far back ...
PUSH_BEHIND_ALONG = 0.02
PUSH_BEHIND_ACROSS = 0.015  # ... within this of the line ...
PUSH_BEHIND_HEIGHT = 2 * OBJECT_HALF_SIZE  # ... and low enough to touch it.
PUSH_UNALIGNED_COST = 0.05  # metres of hand cost added while not behind: being behind always costs less
# An object knocked off the table costs more than any place on it (hand anywhere in its range, object at the
# table's far corner from the zone), so the costs never pay for dropping it where the floor is nearer the zone.
_HAND_TO_TABLE_CORNER = np.linalg.norm([TABLE_HALF_SIZE + max(abs(low), abs(high)) for low, high in HAND_RANGE[:2]]
                                       + [HAND_RANGE[2][1] - OBJECT_HALF_SIZE])
PUSH_OFF_TABLE_COST = float(_HAND_TO_TABLE_CORNER + PUSH_UNALIGNED_COST + 2.0 * 2.0 * np.sqrt(2.0) * TABLE_HALF_SIZE)
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
class PushGeometry:
    """The hand relative to the named object's line to its zone (push shaping; experiments/probe_push.py)."""

    direction: np.ndarray  # unit xy vector from the object to the zone centre
    distance: float  # object to zone centre, xy
    along: float  # hand's offset from the object along ``direction`` (negative: behind it)
    across: float  # and across it
    behind: bool  # behind the object on the line and low enough to push it

    def hand_target(self, measures: TaskMeasures, offset_back: float) -> np.ndarray:
        """The point ``offset_back`` metres behind the object's centre on the line, at table height."""
        return np.array([*(measures.target[:2] - offset_back * self.direction), OBJECT_HALF_SIZE])


def push_geometry(measures: TaskMeasures) -> PushGeometry:
    offset = measures.zone[:2] - measures.target[:2]
    distance = float(np.linalg.norm(offset))
    direction = offset / max(distance, 1e-6)
    relative = measures.hand[:2] - measures.target[:2]
    along = float(relative @ direction)
    across = float(relative @ np.array([-direction[1], direction[0]]))
    behind = along < -PUSH_BEHIND_ALONG and abs(across) < PUSH_BEHIND_ACROSS and \
        measures.hand[2] < PUSH_BEHIND_HEIGHT
    return PushGeometry(direction, distance, along, across, behind)


def _push(measures: TaskMeasures) -> Tuple[bool, float, float]:
    """Push: (success, cost, goal distance), a staged cost, linear in distance. Until the hand is behind the
    object (on its line to the zone, low), it is drawn to the approach point; once behind, to the contact
    point, which it can only near by pushing the object zone-wards. The object is drawn to the zone at twice
    the weight, so moving it pays more than anything the hand does.

    History (PPO from privileged state, 3M env steps each, experiments/results/tabletop_push.md): with one
    target 4.5 cm behind the object and tanh(10 d) costs, flat beyond 0.2 m, 0% success; with the same target
    and linear costs, 7-13%: the policy parked its hand on the target, behind an object it never touched (the
    hand term paid for staying 4.5 cm away, the object term only once the object moved). These staged costs
    removed that optimum but not the parking (0-10%): the action std collapses before the last 2 cm are tried."""
    geometry = push_geometry(measures)
    if measures.target[2] < 0.0:  # below the table top: knocked off
        return False, PUSH_OFF_TABLE_COST, geometry.distance
    offset_back = PUSH_CONTACT_OFFSET if geometry.behind else PUSH_APPROACH_OFFSET
    hand_cost = float(np.linalg.norm(measures.hand - geometry.hand_target(measures, offset_back)))
    hand_cost += 0.0 if geometry.behind else PUSH_UNALIGNED_COST
    on_table = measures.target[2] < 2 * OBJECT_HALF_SIZE
    success = geometry.distance < ZONE_RADIUS and on_table
    return success, hand_cost + 2.0 * geometry.distance, geometry.distance


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
            success, cost, distance = _push(measures)
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
