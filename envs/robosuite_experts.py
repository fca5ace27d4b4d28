"""Scripted robosuite experts with privileged simulator state, for demonstrations and for tests that prove a
task's success is reachable.

They read true positions from the simulation (never the camera), drive robosuite's ``OSC_POSE`` arm controller
(6 end-effector deltas and the gripper, each in [-1, 1]) and keep per-episode state: make a new one with
``make_expert(task)`` for every episode. ``act(suite)`` takes the raw robosuite env (``RobosuiteEnv._env``).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np
from scipy.spatial.transform import Rotation

from vla.errors import ConfigError

GAIN = 10.0  # OSC_POSE maps an action of 1 to a 5 cm end-effector step: aim to close the gap in 2 steps
ROTATION_GAIN = 4.0  # ... and to a 0.5 rad turn: aim to close an orientation error in 2 steps
OPEN, CLOSED = -1.0, 1.0
CONTROLLER = "OSC_POSE"


def _eef(suite) -> np.ndarray:
    return suite.sim.data.site_xpos[suite.robots[0].eef_site_id["right"]].copy()


def _move(goal: np.ndarray, eef: np.ndarray) -> np.ndarray:
    return np.clip(GAIN * (goal - eef), -1, 1)


class PickAndPlaceExpert:
    """Over the grasp point, down, close, up, then (when there is a place point) over it, down, open and up.
    ``grasp_point``/``place_point`` read the robosuite env; the place point is where the grasp point should be
    when the gripper opens. The gripper keeps its orientation throughout."""

    GRIPPER_STEPS = 10  # steps to close or open the fingers
    MOVE_STEPS = 40  # a move that has not arrived by then (an object in the way) goes on to the next stage

    def __init__(self, grasp_point: Callable, place_point: Optional[Callable] = None, lift: float = 0.1):
        self.grasp_point, self.place_point, self.lift = grasp_point, place_point, lift
        self.stage, self.stage_steps, self.anchor = "over_object", 0, None

    def act(self, suite) -> np.ndarray:
        eef = _eef(suite)
        if self.anchor is None:
            self.anchor = eef
        grasp = self.grasp_point(suite)
        place = self.place_point(suite) if self.place_point is not None else None
        stages = {  # stage: (goal, gripper, next stage)
            "over_object": (grasp + [0, 0, 0.08], OPEN, "down_to_object"),
            "down_to_object": (grasp, OPEN, "close"),
            "close": (self.anchor, CLOSED, "up"),
            "up": (self.anchor + [0, 0, self.lift], CLOSED, "over_place" if place is not None else "up"),
            "over_place": (None if place is None else place + [0, 0, 0.1], CLOSED, "down_to_place"),
            "down_to_place": (place, CLOSED, "open"),
            "open": (self.anchor, OPEN, "retreat"),
            # Up and away: robosuite counts a placed object only once the gripper has left it.
            "retreat": (self.anchor + [0, 0, 0.1], OPEN, "retreat"),
        }
        goal, gripper, next_stage = stages[self.stage]
        self.stage_steps += 1
        if self.stage in ("close", "open"):
            done = self.stage_steps >= self.GRIPPER_STEPS
        else:
            done = np.linalg.norm(goal - eef) < 0.01 or self.stage_steps >= self.MOVE_STEPS
        if done and next_stage != self.stage:
            self.stage, self.stage_steps, self.anchor = next_stage, 0, eef
        return np.array([*_move(goal, eef), 0, 0, 0, gripper], dtype=np.float32)


class DoorExpert:
    """Door: turn the gripper so its fingers close along the latch's axis, come down over the handle's outer
    end (which pushes the spring-loaded handle down and turns the latch open), close on the handle, then pull
    it along the door's arc around the hinge until the door is open.

    Closing along the latch axis lets the handle pivot inside the grasp while it turns; the arc's tangent is
    recomputed every step from the hinge and the handle's current position.
    """

    MOVE_STEPS = 60  # a move that has not arrived by then goes on to the next stage
    GRIPPER_STEPS = 10
    PULL_STEP = 0.03  # metres along the arc per step's goal

    def __init__(self):
        self.stage, self.stage_steps = "over_handle", 0

    def act(self, suite) -> np.ndarray:
        eef, model, data = _eef(suite), suite.sim.model, suite.sim.data
        orientation = data.site_xmat[suite.robots[0].eef_site_id["right"]].reshape(3, 3)
        handle = data.site_xpos[suite.door_handle_site_id].copy()
        latch_joint, hinge_joint = (model.joint_name2id(suite.door.joints[i]) for i in (1, 0))
        latch_axis = data.xaxis[latch_joint] * [1, 1, 0]
        latch_axis /= np.linalg.norm(latch_axis)
        # Pointing down, fingers (the gripper's y axis) along the latch axis, on whichever side turns less.
        fingers = latch_axis if latch_axis @ orientation[:, 1] >= 0 else -latch_axis
        down = np.array([0.0, 0.0, -1.0])
        wanted = np.stack([np.cross(fingers, down), fingers, down], axis=1)
        turn = (Rotation.from_matrix(wanted) * Rotation.from_matrix(orientation).inv()).as_rotvec()

        self.stage_steps += 1
        gripper = CLOSED
        if self.stage == "over_handle":
            goal, gripper = handle + [0, 0, 0.08], OPEN
            arrived = np.linalg.norm(goal - eef) < 0.01 and np.linalg.norm(turn) < 0.05
            self._next_stage_if(arrived or self.stage_steps > self.MOVE_STEPS, "down")
        elif self.stage == "down":  # pushes the handle down on the way: the latch turns open
            goal, gripper = handle, OPEN
            self._next_stage_if(np.linalg.norm(goal - eef) < 0.01 or self.stage_steps > self.MOVE_STEPS, "close")
        elif self.stage == "close":
            goal = handle
            self._next_stage_if(self.stage_steps >= self.GRIPPER_STEPS, "pull")
        else:  # pull: along the door's arc, towards the robot's side of the door
            radial = (handle - data.xanchor[hinge_joint]) * [1, 1, 0]
            tangent = np.cross([0.0, 0.0, 1.0], radial)
            tangent /= np.linalg.norm(tangent)
            goal = eef + self.PULL_STEP * (tangent if tangent[1] >= 0 else -tangent)
        rotation = np.clip(ROTATION_GAIN * turn, -1, 1)
        return np.array([*_move(goal, eef), *rotation, gripper], dtype=np.float32)

    def _next_stage_if(self, condition: bool, stage: str) -> None:
        if condition:
            self.stage, self.stage_steps = stage, 0


def body_position(name: str) -> Callable:
    return lambda suite: np.array(suite.sim.data.body_xpos[suite.sim.model.body_name2id(name)])


def site_position(name: str) -> Callable:
    return lambda suite: np.array(suite.sim.data.site_xpos[suite.sim.model.site_name2id(name)])


def nut_over_round_peg(suite) -> np.ndarray:
    """Where the nut's handle must be for the nut's centre to sit 0.15 m above the round peg's base."""
    handle_offset = site_position("RoundNut_handle_site")(suite) - body_position("RoundNut_main")(suite)
    return body_position("peg2")(suite) + handle_offset * [1, 1, 0] + [0, 0, 0.15]


# task: (grasp point, place point, lift height). The expert is simple: it drops the nut or misses the bin in
# about one episode in three.
PICK_AND_PLACE: Dict[str, Tuple[Callable, Optional[Callable], float]] = {
    "Lift": (body_position("cube_main"), None, 0.1),
    "Stack": (body_position("cubeA_main"), lambda suite: body_position("cubeB_main")(suite) + [0, 0, 0.05], 0.1),
    "PickPlaceCan": (body_position("Can_main"),
                     lambda suite: suite.target_bin_placements[suite.object_to_id["can"]] + [0, 0, 0.1], 0.2),
    "NutAssemblyRound": (site_position("RoundNut_handle_site"), nut_over_round_peg, 0.2),
}
EXPERT_TASKS = tuple(sorted([*PICK_AND_PLACE, "Door"]))


def make_expert(task: str, controller: str = CONTROLLER):
    """A fresh expert (one per episode) for robosuite ``task``; refuses tasks without one and other controllers."""
    if controller != CONTROLLER:
        raise ConfigError(f"the scripted robosuite experts drive env.controller={CONTROLLER}, not {controller!r}; "
                          f"record demonstrations with env.controller={CONTROLLER}")
    if task == "Door":
        return DoorExpert()
    if task not in PICK_AND_PLACE:
        raise ConfigError(f"robosuite task {task!r} has no scripted expert; experts exist for {list(EXPERT_TASKS)}")
    return PickAndPlaceExpert(*PICK_AND_PLACE[task])
