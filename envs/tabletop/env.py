"""``TabletopEnv``: fast native MuJoCo tabletop tasks (reach, push, lift) with language instructions."""

from __future__ import annotations

import string
from typing import Any, Dict, List, Optional, Sequence

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from envs.gl import load_triton_before_gl
from envs.tabletop.scene import (
    CAMERA_NAMES, COLOUR_NAMES, COLOURS, DISPLAY_CAMERA, FINGER_MAX_OPENING, HAND_HOME, HAND_RANGE, HELDOUT_COLOURS,
    NUM_ZONES, OBJECT_HALF_SIZE, SHAPE_NOUNS, SHAPES, TABLE_HALF_SIZE, ZONE_RADIUS, build_scene_xml,
)
from envs.tabletop.tasks import TASKS, TaskMeasures
from envs.wrappers import camera_image_key
from vla.errors import ConfigError

MAX_HAND_STEP = 0.02  # metres the hand's position target may move per control step (action bound)
MAX_TARGET_LEAD = 0.05  # how far the target may run ahead of the hand (no wind-up against the table or an object)
PHYSICS_STEPS_PER_ACTION = 5  # 5 x 8 ms: the policy acts at 25 Hz
OBJECT_MIN_SPACING = 0.08  # centre-to-centre, so objects never start touching
# Where inactive objects (beyond the active num_objects of a model built for max_objects) wait: far off the
# table, out of view, floating (gravity compensated), invisible and without contacts.
PARKED_OBJECT_POSITION = (3.0, 3.0, 1.0)

REWARD_KINDS = ("dense", "sparse")
INSTRUCTION_MODES = ("sample", "fixed")
SPLITS = ("all", "train", "heldout")
INSTRUCTION_CHARSET = string.ascii_lowercase + " "
INSTRUCTION_MAX_LENGTH = 96


class TabletopEnv(gym.Env):
    """A two-finger gripper over a table with ``num_objects`` coloured objects; the instruction names one.

    Action (natural bounds): ``[dx, dy, dz]`` in metres (at most ``MAX_HAND_STEP``) moves the hand's position
    target, and a gripper command in [-1, 1] (-1 open, +1 closed). Observation: ``state`` (hand position,
    hand velocity, finger opening; with ``privileged_state`` also the named object's position and its goal
    position), ``image`` (the first camera) and ``<camera>_image`` for further cameras, and ``instruction``;
    with ``privileged_obs`` also ``privileged`` (the named object's position and its goal position, for an
    asymmetric critic: the value head may read it, the actor never does).
    ``info`` carries ``success``, ``task`` and ``goal_distance``. The env itself never terminates: ending on
    success is the ``SuccessInfo`` wrapper's job, and an object knocked off the table lands on an invisible
    floor, where the task's cost stays near its maximum until the time limit. (Terminating there instead ended
    the stream of per-step costs early, and PPO learned to push the object off the table on purpose: 15 of 30
    episodes of a push run from privileged state at 369k steps.)

    Per-episode choices (colours, target, zone, instruction) live in Python and in model fields that
    ``mj_getState`` does not capture: ``get_task_state``/``set_task_state`` carry them for exact resume.

    Difficulty can change between episodes (a curriculum, ``vla/curriculum.py``): ``set_difficulty`` sets the
    placement range and the number of active objects for the next reset. The model holds ``max_objects``
    objects (default ``num_objects``); inactive ones are parked out of play.

    ``split`` picks what instructions and colours an episode may have, for generalization tests: "all" (every
    colour and paraphrase, as before splits existed), "train" (never a colour of ``HELDOUT_COLOURS`` on any
    object or zone, never a task's held-out paraphrase) or "heldout" (the named object always in a held-out
    colour, the instruction always a held-out paraphrase; distractors and zones in training colours).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(self, task: str = "reach", num_objects: int = 3, cameras: Sequence[str] = ("front",),
                 use_camera: bool = True, image_size: int = 64, video_size: int = 256, reward: str = "dense",
                 time_penalty: float = 0.0, placement_range: float = 0.15, instruction_mode: str = "sample",
                 privileged_state: bool = False, privileged_obs: bool = False,
                 render_mode: Optional[str] = None, max_objects: Optional[int] = None, split: str = "all"):
        _check_choice("env.task", task, list(TASKS))
        _check_choice("env.reward", reward, REWARD_KINDS)
        _check_choice("env.instruction_mode", instruction_mode, INSTRUCTION_MODES)
        _check_choice("env.split", split, SPLITS)
        if render_mode is not None:
            _check_choice("render_mode", render_mode, self.metadata["render_modes"])
        heldout = [COLOUR_NAMES.index(name) for name in HELDOUT_COLOURS]
        # Colours objects and zones are drawn from (the named object's is replaced by a held-out one in the
        # held-out split): distinct per object, so an instruction's colour names one object.
        self._palette = np.arange(len(COLOURS)) if split == "all" else \
            np.array([i for i in range(len(COLOURS)) if i not in heldout])
        self._heldout_colours = np.array(heldout)
        self.split = split
        self.max_objects = num_objects if max_objects is None else max_objects
        if not 1 <= self.max_objects <= len(self._palette):
            name = "env.num_objects" if max_objects is None else "env.max_objects"
            raise ConfigError(f"{name}={self.max_objects} must be between 1 and {len(self._palette)} with "
                              f"env.split={split} (objects have distinct colours: "
                              f"{[COLOUR_NAMES[i] for i in self._palette]})")
        self._check_difficulty(placement_range, num_objects)
        for camera in cameras:
            _check_choice("env.cameras entry", camera, CAMERA_NAMES)
        if use_camera and not cameras:
            raise ConfigError(f"env.cameras is empty but env.use_camera is true; name one of {list(CAMERA_NAMES)}")
        self.task = TASKS[task]
        self.num_objects = num_objects
        self.cameras = list(cameras) if use_camera else []
        self.image_size, self.video_size = image_size, video_size
        self.reward_kind, self.time_penalty = reward, time_penalty
        self.placement_range, self.instruction_mode = placement_range, instruction_mode
        self.privileged_state, self.render_mode = privileged_state, render_mode
        self.privileged_obs = privileged_obs

        self.model = mujoco.MjModel.from_xml_string(build_scene_xml(self.max_objects, image_size, video_size))
        self.data = mujoco.MjData(self.model)
        objects = range(self.max_objects)
        self._object_qpos = [self.model.jnt_qposadr[self.model.joint(f"object{i}").id] for i in objects]
        self._object_geoms = [self.model.geom(f"object{i}").id for i in objects]
        self._object_bodies = [self.model.body(f"object{i}").id for i in objects]
        # Collision bits of an active object (an inactive one gets none).
        self._object_contacts = (self.model.geom_contype[self._object_geoms].copy(),
                                 self.model.geom_conaffinity[self._object_geoms].copy())
        self._finger_geoms = (self.model.geom("finger_left").id, self.model.geom("finger_right").id)
        self._zone_bodies = [self.model.body(f"zone{i}").id for i in range(NUM_ZONES)]
        self._zone_geoms = [self.model.geom(f"zone{i}").id for i in range(NUM_ZONES)]
        self._image_renderer: Optional[mujoco.Renderer] = None
        self._video_renderer: Optional[mujoco.Renderer] = None

        self.action_space = spaces.Box(
            low=np.array([-MAX_HAND_STEP] * 3 + [-1.0], dtype=np.float32),
            high=np.array([MAX_HAND_STEP] * 3 + [1.0], dtype=np.float32),
        )
        state_size = 7 + (6 if privileged_state else 0)
        observation = {"state": spaces.Box(-np.inf, np.inf, shape=(state_size,), dtype=np.float32)}
        for index, camera in enumerate(self.cameras):
            observation[camera_image_key(camera, index)] = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        observation["instruction"] = spaces.Text(INSTRUCTION_MAX_LENGTH, charset=INSTRUCTION_CHARSET)
        if privileged_obs:
            observation["privileged"] = spaces.Box(-np.inf, np.inf, shape=(6,), dtype=np.float32)
        self.observation_space = spaces.Dict(observation)
        self._task_state: Dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------- difficulty
    def _check_difficulty(self, placement_range: float, num_objects: int) -> None:
        if not 1 <= num_objects <= self.max_objects:
            raise ConfigError(f"env.num_objects={num_objects} must be between 1 and {self.max_objects} (the "
                              f"objects the model was built with: env.max_objects, default env.num_objects; "
                              f"objects have distinct colours, {len(self._palette)} with env.split={self.split})")
        max_range = TABLE_HALF_SIZE - 2 * OBJECT_HALF_SIZE
        if not 2 * OBJECT_HALF_SIZE <= placement_range <= max_range:
            raise ConfigError(f"env.placement_range={placement_range} must lie in "
                              f"[{2 * OBJECT_HALF_SIZE}, {max_range}] metres (objects must start on the table)")

    def set_difficulty(self, placement_range: Optional[float] = None, num_objects: Optional[int] = None) -> None:
        """From the next reset on: objects placed within +-``placement_range`` metres, ``num_objects`` of them
        active (at most ``max_objects``); None keeps the current value. Through a vector env and its wrappers:
        ``envs.call("set_difficulty", placement_range=..., num_objects=...)``."""
        placement_range = self.placement_range if placement_range is None else float(placement_range)
        num_objects = self.num_objects if num_objects is None else int(num_objects)
        self._check_difficulty(placement_range, num_objects)
        self.placement_range, self.num_objects = placement_range, num_objects

    # ---------------------------------------------------------------------------------------------- episode
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        rng = self.np_random
        mujoco.mj_resetData(self.model, self.data)
        colours = rng.choice(self._palette, size=self.num_objects, replace=False)
        zone_colours = rng.choice(self._palette, size=NUM_ZONES, replace=False)
        zone_positions = (self._sample_positions(NUM_ZONES, 2 * ZONE_RADIUS + 0.02, [])
                          if self.task.uses_zone else [])
        # Objects keep clear of the zones, so no object starts inside a goal.
        object_positions = self._sample_positions(self.num_objects, OBJECT_MIN_SPACING, zone_positions,
                                                  clearance=ZONE_RADIUS + OBJECT_HALF_SIZE + 0.01)
        target = int(rng.integers(self.num_objects))
        target_zone = int(rng.integers(NUM_ZONES)) if self.task.uses_zone else -1
        if self.split == "heldout":  # the palette holds no held-out colour: the named object stays distinct
            colours[target] = rng.choice(self._heldout_colours)
        shape_nouns = SHAPE_NOUNS[SHAPES[target % len(SHAPES)]]
        templates = self.task.instruction_templates(self.split)
        if self.instruction_mode == "sample":
            template = templates[rng.integers(len(templates))]
            noun = shape_nouns[rng.integers(len(shape_nouns))]
        else:
            template, noun = templates[0], shape_nouns[0]
        instruction = template.format(
            object=f"{COLOUR_NAMES[colours[target]]} {noun}",
            zone=COLOUR_NAMES[zone_colours[target_zone]] if self.task.uses_zone else "",
        )
        self.set_task_state({
            "colours": [int(c) for c in colours], "zone_colours": [int(c) for c in zone_colours],
            "zone_positions": [[float(x), float(y)] for x, y in zone_positions],
            "target": target, "target_zone": target_zone, "instruction": instruction,
        })
        for qpos_address, (x, y) in zip(self._object_qpos, object_positions):
            yaw = rng.uniform(-np.pi, np.pi)
            self.data.qpos[qpos_address:qpos_address + 7] = [x, y, OBJECT_HALF_SIZE,
                                                             np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        for index in range(self.num_objects, self.max_objects):
            qpos_address = self._object_qpos[index]
            x, y, z = PARKED_OBJECT_POSITION
            self.data.qpos[qpos_address:qpos_address + 7] = [x + 0.1 * index, y, z, 1.0, 0.0, 0.0, 0.0]
        hand = np.asarray(HAND_HOME) + rng.uniform(-0.03, 0.03, size=3)
        self.data.qpos[:3] = hand
        self.data.qpos[3:5] = FINGER_MAX_OPENING
        self.data.ctrl[:3] = hand
        self.data.ctrl[3:5] = FINGER_MAX_OPENING
        mujoco.mj_forward(self.model, self.data)
        success, _, distance = self.task.evaluate(self.measures())
        return self._observation(), self._info(success, distance)

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        hand = self.data.qpos[:3]
        position_target = np.clip(self.data.ctrl[:3] + np.clip(action[:3], -MAX_HAND_STEP, MAX_HAND_STEP),
                                  hand - MAX_TARGET_LEAD, hand + MAX_TARGET_LEAD)
        self.data.ctrl[:3] = np.clip(position_target, [r[0] for r in HAND_RANGE], [r[1] for r in HAND_RANGE])
        self.data.ctrl[3:5] = FINGER_MAX_OPENING * (1.0 - float(np.clip(action[3], -1.0, 1.0))) / 2.0
        mujoco.mj_step(self.model, self.data, nstep=PHYSICS_STEPS_PER_ACTION)

        measures = self.measures()
        success, dense_reward, distance = self.task.evaluate(measures)
        reward = dense_reward if self.reward_kind == "dense" else float(success)
        return self._observation(), reward - self.time_penalty, False, False, self._info(success, distance)

    def _sample_positions(self, count: int, spacing: float, keep_clear_of: List[List[float]],
                          clearance: float = 0.0) -> List[List[float]]:
        """``count`` xy positions in the placement square, ``spacing`` apart and ``clearance`` from others."""
        positions: List[List[float]] = []
        for _ in range(1000):
            if len(positions) == count:
                return positions
            candidate = self.np_random.uniform(-self.placement_range, self.placement_range, size=2)
            if all(np.linalg.norm(candidate - p) >= spacing for p in positions) and \
                    all(np.linalg.norm(candidate - np.asarray(p)) >= clearance for p in keep_clear_of):
                positions.append([float(candidate[0]), float(candidate[1])])
        raise ConfigError(f"could not place {count} items {spacing} m apart within env.placement_range="
                          f"{self.placement_range}; raise placement_range or lower num_objects")

    # ----------------------------------------------------------------------------------- exact-resume state
    def get_task_state(self) -> Dict[str, Any]:
        """This episode's choices (JSON-serializable), for ``envs.wrappers.Snapshot``."""
        return dict(self._task_state)

    def set_task_state(self, task_state: Dict[str, Any]) -> None:
        """Restore the episode's choices and the model fields they set (object and zone colours, zone places,
        which objects are active: the first ``len(colours)``)."""
        self._task_state = dict(task_state)
        active = len(task_state["colours"])
        contype, conaffinity = self._object_contacts
        for index, (geom, body) in enumerate(zip(self._object_geoms, self._object_bodies)):
            if index < active:
                self.model.geom_rgba[geom] = COLOURS[COLOUR_NAMES[task_state["colours"][index]]]
            else:
                self.model.geom_rgba[geom, 3] = 0.0
            self.model.geom_contype[geom] = contype[index] if index < active else 0
            self.model.geom_conaffinity[geom] = conaffinity[index] if index < active else 0
            self.model.body_gravcomp[body] = 0.0 if index < active else 1.0
        for index, (body, geom) in enumerate(zip(self._zone_bodies, self._zone_geoms)):
            if self.task.uses_zone:
                x, y = task_state["zone_positions"][index]
                self.model.body_pos[body] = [x, y, 0.0]
                self.model.geom_rgba[geom] = COLOURS[COLOUR_NAMES[task_state["zone_colours"][index]]]
            else:
                self.model.geom_rgba[geom, 3] = 0.0  # invisible: parked zones would still show on camera

    # -------------------------------------------------------------------------------------- observations
    def measures(self) -> TaskMeasures:
        """Privileged positions (grasp point, named object, goal zone) the task scores; scripted experts read them."""
        target = self._task_state["target"]
        address = self._object_qpos[target]
        zone = self._task_state["target_zone"]
        zone_position = self.data.xpos[self._zone_bodies[zone]] if zone >= 0 else np.zeros(3)
        return TaskMeasures(hand=self.data.qpos[:3].copy(), target=self.data.qpos[address:address + 3].copy(),
                            zone=zone_position.copy(),
                            grasped=self.task.uses_grasp and self._is_grasped(self._object_geoms[target]))

    def _is_grasped(self, object_geom: int) -> bool:
        """Both fingers touch the object."""
        pairs = self.data.contact.geom  # (ncon, 2) geom ids of the active contacts
        touching = pairs[(pairs == object_geom).any(axis=1)]
        return all(np.any(touching == finger) for finger in self._finger_geoms)

    def _observation(self) -> Dict[str, Any]:
        finger_opening = self.data.qpos[3:5].mean()
        parts = [self.data.qpos[:3], self.data.qvel[:3], [finger_opening]]
        privileged = []
        if self.privileged_state or self.privileged_obs:
            measures = self.measures()
            privileged = [measures.target, self.task.goal(measures)]
        if self.privileged_state:
            parts += privileged
        observation: Dict[str, Any] = {"state": np.concatenate(parts).astype(np.float32)}
        if self.privileged_obs:
            observation["privileged"] = np.concatenate(privileged).astype(np.float32)
        if self.cameras:
            if self._image_renderer is None:
                load_triton_before_gl()
                self._image_renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
            for index, camera in enumerate(self.cameras):
                self._image_renderer.update_scene(self.data, camera=camera)
                observation[camera_image_key(camera, index)] = self._image_renderer.render()
        observation["instruction"] = self._task_state["instruction"]
        return observation

    def _info(self, success: bool, distance: float) -> Dict[str, Any]:
        # "object": the named object's shape, so evaluation reports can break success down by it.
        return {"success": bool(success), "task": f"tabletop/{self.task.name}", "goal_distance": distance,
                "object": SHAPES[self._task_state["target"] % len(SHAPES)]}

    # ----------------------------------------------------------------------------------------- rendering
    def render(self) -> Optional[np.ndarray]:
        """The display camera at ``video_size`` (``render_mode="rgb_array"``)."""
        if self.render_mode != "rgb_array":
            return None
        if self._video_renderer is None:
            load_triton_before_gl()
            self._video_renderer = mujoco.Renderer(self.model, self.video_size, self.video_size)
        self._video_renderer.update_scene(self.data, camera=DISPLAY_CAMERA)
        return self._video_renderer.render()

    def close(self) -> None:
        for renderer in (self._image_renderer, self._video_renderer):
            if renderer is not None:
                renderer.close()
        self._image_renderer = self._video_renderer = None


def _check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not supported; choose one of {list(allowed)}")
