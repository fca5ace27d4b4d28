"""robosuite 1.5 manipulation tasks under the env contract; env kind ``robosuite``.

robosuite itself is imported when the first env is built (importing it takes about a second and prints
warnings), so registering this kind costs nothing for runs that never use it.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Sequence, Tuple

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from envs.registry import register_env_kind
from envs.wrappers import SuccessInfo, camera_image_key
from vla.errors import ConfigError

# Instruction paraphrases per task (the first is the canonical one, used with instruction_mode=fixed).
TASK_INSTRUCTIONS: Dict[str, Tuple[str, ...]] = {
    "Lift": ("lift the red cube", "pick up the red block", "grasp the cube and raise it off the table"),
    "Stack": ("stack the red cube on the green cube", "put the red block on top of the green block",
              "place the red cube onto the green one"),
    "Door": ("open the door", "pull the door open", "turn the handle and swing the door open"),
    "PickPlaceCan": ("put the can in its bin", "pick up the can and place it in the bin",
                     "move the soda can into its bin"),
    "NutAssemblyRound": ("put the round nut on the round peg", "fit the round nut onto its peg",
                         "place the round nut over the round peg"),
    "Wipe": ("wipe the markings off the table", "clean the dirt off the table",
             "wipe the table clean"),
}
# Generalization splits (env.split): "all" and "train" are robosuite's tasks as they are; "heldout" exists for
# Lift: a smaller cube, 15-18 mm half-size (the range robosuite's source keeps in a comment beside its 20-22 mm)
# and an instruction paraphrase that training never uses.
SPLITS = ("all", "train", "heldout")
LIFT_CUBE_HALF_SIZE = (0.020, 0.022)  # robosuite's Lift: each half-side drawn from this range
HELDOUT_CUBE_HALF_SIZE = (0.015, 0.018)
HELDOUT_INSTRUCTIONS: Dict[str, Tuple[str, ...]] = {"Lift": ("raise the red block off the table",)}
# Per-episode state of these tasks lives in Python and in model fields that mj_getState does not capture
# (Wipe: which markers are wiped, their places and colours), so their snapshots are not exact.
TASKS_WITHOUT_EXACT_SNAPSHOT = ("Wipe",)
# Controller attributes fixed at reset that later steps read (not recomputed from the simulation each step).
CONTROLLER_EPISODE_FIELDS = ("initial_joint", "initial_ref_pos", "initial_ref_ori_mat")
ARM_CONTROLLERS = ("OSC_POSE", "OSC_POSITION", "IK_POSE", "JOINT_POSITION", "JOINT_VELOCITY", "JOINT_TORQUE")
INSTRUCTION_MODES = ("sample", "fixed")
# Expensive visual effects that fast rendering turns off (about 3x faster offscreen rendering with llvmpipe).
SLOW_RENDER_FLAGS = (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                     mujoco.mjtRndFlag.mjRND_SKYBOX)


@functools.lru_cache(maxsize=None)
def heldout_lift_class():
    """robosuite's Lift with the cube's half-size drawn from ``HELDOUT_CUBE_HALF_SIZE`` (registered with robosuite
    as ``HeldoutLift``). Lift builds its cube inside ``_load_model``; the subclass swaps the size range there."""
    from robosuite.environments.manipulation import lift

    class HeldoutLift(lift.Lift):
        def _load_model(self):
            box = lift.BoxObject
            low, high = HELDOUT_CUBE_HALF_SIZE
            lift.BoxObject = lambda **kwargs: box(**{**kwargs, "size_min": [low] * 3, "size_max": [high] * 3})
            try:
                super()._load_model()
            finally:
                lift.BoxObject = box

    return HeldoutLift


def controller_config(robot: str, arm_controller: str) -> Dict[str, Any]:
    """The robot's default composite controller config with ``arm_controller`` driving each arm."""
    from robosuite.controllers import load_composite_controller_config, load_part_controller_config

    if arm_controller not in ARM_CONTROLLERS:
        raise ConfigError(f"env.controller={arm_controller!r} is not supported; choose one of {list(ARM_CONTROLLERS)}")
    composite = load_composite_controller_config(robot=robot)
    for part, part_config in composite["body_parts"].items():
        if part in ("right", "left"):  # arms; keep each arm's gripper controller
            arm = load_part_controller_config(default_controller=arm_controller)
            if "gripper" in part_config:
                arm["gripper"] = part_config["gripper"]
            composite["body_parts"][part] = arm
    return composite


class RobosuiteEnv(gym.Env):
    """One robosuite task as a gymnasium env.

    Observation: ``state`` (robot proprio, plus object state with ``use_object_obs``), camera images (the
    first camera as ``image``, further ones as ``<camera>_image``, uint8 HxWx3 the right way up) and
    ``instruction``; with ``privileged_obs`` also ``privileged``, the task's object state (for an asymmetric
    critic). Actions: robosuite's own (OSC_POSE: 6 end-effector deltas and the gripper, in [-1, 1]).
    robosuite reports its horizon as ``done``: here that is ``truncated``; ``terminated`` is a real end (Wipe
    stops on collisions or joint limits). ``info["success"]`` is the task's own ``_check_success()``.
    ``reset(seed=...)`` reseeds robosuite's generator (object placement, robot initial noise) from the env's
    ``np_random``, so a seed fixes the initial state (Lift's cube size included).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, task: str = "Lift", robot: str = "Panda", controller: str = "OSC_POSE",
                 control_freq: int = 20, horizon: int = 500, reward_shaping: bool = True, use_camera: bool = True,
                 cameras: Sequence[str] = ("agentview",), camera_size: int = 84, use_object_obs: bool = True,
                 privileged_obs: bool = False,
                 fast_render: bool = True, hard_reset: bool = False, video_camera: str = "frontview",
                 video_size: int = 256, instruction_mode: str = "sample", render_mode: Optional[str] = None,
                 split: str = "all"):
        import robosuite

        if task not in TASK_INSTRUCTIONS:
            raise ConfigError(f"env.task={task!r} is not supported; choose one of {list(TASK_INSTRUCTIONS)}")
        if instruction_mode not in INSTRUCTION_MODES:
            raise ConfigError(f"env.instruction_mode={instruction_mode!r}; choose one of {list(INSTRUCTION_MODES)}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ConfigError(f"render_mode={render_mode!r}; choose one of {self.metadata['render_modes']} or None")
        if split not in SPLITS:
            raise ConfigError(f"env.split={split!r} is not supported; choose one of {list(SPLITS)}")
        if split == "heldout" and task not in HELDOUT_INSTRUCTIONS:
            raise ConfigError(f"env.split=heldout is defined for robosuite {list(HELDOUT_INSTRUCTIONS)}, not "
                              f"{task}; use env.split=all (or evaluate without heldout)")
        if robot not in robosuite.ALL_ROBOTS:
            raise ConfigError(f"env.robot={robot!r} is not a robosuite robot; choose one of {robosuite.ALL_ROBOTS}")
        if use_camera and not cameras:
            raise ConfigError("env.cameras is empty but env.use_camera is true; name at least one camera")
        self.task, self.instruction_mode, self.render_mode = task, instruction_mode, render_mode
        self._paraphrases = HELDOUT_INSTRUCTIONS[task] if split == "heldout" else TASK_INSTRUCTIONS[task]
        self.cameras = list(cameras) if use_camera else []
        self.fast_render, self.video_camera, self.video_size = fast_render, video_camera, video_size
        try:
            self._env = robosuite.make(
                heldout_lift_class().__name__ if split == "heldout" else task, robots=robot,
                controller_configs=controller_config(robot, controller),
                has_renderer=False, has_offscreen_renderer=use_camera or render_mode == "rgb_array",
                use_camera_obs=use_camera, camera_names=self.cameras or "agentview",  # a name, unused w/o camera
                camera_heights=camera_size, camera_widths=camera_size,
                use_object_obs=use_object_obs or privileged_obs,
                reward_shaping=reward_shaping, control_freq=control_freq, horizon=horizon, hard_reset=hard_reset,
                ignore_done=False,
            )
        except ValueError as error:  # e.g. an unknown camera name (robosuite logs the available ones)
            raise ConfigError(f"robosuite could not build {task} with robot={robot!r}, cameras={self.cameras}: "
                              f"{error}") from error
        known_cameras = list(self._env.sim.model.camera_names)
        if render_mode == "rgb_array" and video_camera not in known_cameras:
            self._env.close()
            raise ConfigError(f"env.video_camera={video_camera!r} is not in robosuite {task}; "
                              f"choose one of {known_cameras}")
        self._state_keys = [f"{self._env.robots[0].robot_model.naming_prefix}proprio-state"]
        if use_object_obs:
            self._state_keys.append("object-state")
        self.privileged_obs = privileged_obs
        self._fast_render_context = None
        self._instruction = self._paraphrases[0]
        # robosuite draws Lift's cube size when it builds the model, from a generator seeded by nothing: with
        # hard_reset=false the model (and the size) stays for the env's life, so episodes on the same seed got
        # another cube in every process. Here each reset draws the size from the episode's seed instead.
        self._cube_half_size_range = (HELDOUT_CUBE_HALF_SIZE if split == "heldout" else LIFT_CUBE_HALF_SIZE) \
            if task == "Lift" and not hard_reset else None
        self._cube_density: Optional[float] = None
        self._scratch_data: Optional[mujoco.MjData] = None

        low, high = self._env.action_spec
        self.action_space = spaces.Box(low.astype(np.float32), high.astype(np.float32))
        spec = self._env.observation_spec()
        state_size = sum(int(np.prod(spec[key].shape)) for key in self._state_keys)
        observation = {"state": spaces.Box(-np.inf, np.inf, shape=(state_size,), dtype=np.float32)}
        for index, camera in enumerate(self.cameras):
            observation[camera_image_key(camera, index)] = spaces.Box(0, 255, (camera_size, camera_size, 3), np.uint8)
        longest = max(len(text) for text in TASK_INSTRUCTIONS[task] + HELDOUT_INSTRUCTIONS.get(task, ()))
        observation["instruction"] = spaces.Text(longest, charset="abcdefghijklmnopqrstuvwxyz ")
        if privileged_obs:
            size = int(np.prod(spec["object-state"].shape))
            observation["privileged"] = spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float32)
        self.observation_space = spaces.Dict(observation)

    # The raw MuJoCo structures, for envs.wrappers.Snapshot (properties: a hard reset replaces the simulation).
    @property
    def model(self) -> mujoco.MjModel:
        return self._env.sim.model._model

    @property
    def data(self) -> mujoco.MjData:
        return self._env.sim.data._data

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        # robosuite's placement samplers and robot hold references to this one generator: reseeding it in
        # place makes the episode's initial state a function of np_random.
        episode_seed = int(self.np_random.integers(2**63))
        self._env.rng.bit_generator.state = np.random.PCG64(episode_seed).state
        paraphrases = self._paraphrases
        self._instruction = paraphrases[self.np_random.integers(len(paraphrases))] \
            if self.instruction_mode == "sample" else paraphrases[0]
        if self._cube_half_size_range is not None:
            self._set_cube_half_size(self.np_random.uniform(*self._cube_half_size_range, size=3))
        raw = self._env.reset()
        if self.fast_render and self._fast_render_context is not self._env.sim._render_context_offscreen:
            self._make_rendering_fast()
            raw = self._env._get_observations(force_update=True)  # the reset's images were rendered slowly
        return self._observation(raw), {"success": bool(self._env._check_success()), "task": self._task_name}

    def step(self, action):
        raw, reward, done, _ = self._env.step(np.asarray(action, dtype=np.float64))
        horizon_reached = self._env.timestep >= self._env.horizon
        info = {"success": bool(self._env._check_success()), "task": self._task_name}
        return self._observation(raw), float(reward), bool(done and not horizon_reached), horizon_reached, info

    def _set_cube_half_size(self, half_size) -> None:
        """Resize Lift's cube in the kept model so that it equals the model robosuite would build with that
        size: collision and visual geoms and their bounding volumes, the body's mass and inertia (robosuite's
        box density, read off the built model) and the constants MuJoCo derives from them (``mj_setConst``:
        inverse weights that set contact softness, ``dof_M0``, subtree masses), and robosuite's object, whose
        bottom offset the placement sampler reads at the next reset."""
        cube, model = self._env.cube, self.model
        size = np.asarray(half_size, dtype=np.float64)
        body = model.body(cube.root_body).id
        if self._cube_density is None:  # robosuite's density: the built cube's mass over its volume
            self._cube_density = float(model.body_mass[body] / (8.0 * np.prod(cube.size)))
            self._scratch_data = mujoco.MjData(model)  # mj_setConst overwrites the data it is given
        cube.size = size
        for name in cube.contact_geoms + cube.visual_geoms:
            geom = model.geom(name).id
            model.geom_size[geom] = size
            model.geom_rbound[geom] = np.linalg.norm(size)
            model.geom_aabb[geom, 3:] = size
        model.bvh_aabb[model.body_bvhadr[body]:model.body_bvhadr[body] + model.body_bvhnum[body], 3:] = size
        mass = self._cube_density * 8.0 * np.prod(size)
        squares = size**2
        model.body_mass[body] = mass
        model.body_inertia[body] = mass / 3.0 * (squares.sum() - squares)  # a solid box about its centre
        mujoco.mj_setConst(model, self._scratch_data)

    def _make_rendering_fast(self) -> None:
        """Shadows, reflections, skybox off and no multisampling, on the current render context."""
        context = self._env.sim._render_context_offscreen
        if context is None:
            return
        for flag in SLOW_RENDER_FLAGS:
            context.scn.flags[flag] = 0
        # The sample count is read when the GL buffers are made: remake them.
        self.model.vis.quality.offsamples = 0
        context.con.free()
        context._set_mujoco_context_and_buffers()
        self._fast_render_context = context

    @property
    def _task_name(self) -> str:
        return f"robosuite/{self.task}"

    def _observation(self, raw: Dict[str, np.ndarray]) -> Dict[str, Any]:
        observation: Dict[str, Any] = {
            "state": np.concatenate([raw[key] for key in self._state_keys]).astype(np.float32)}
        for index, camera in enumerate(self.cameras):
            # robosuite's offscreen images are upside down (OpenGL's origin is the bottom-left corner).
            observation[camera_image_key(camera, index)] = np.ascontiguousarray(raw[f"{camera}_image"][::-1])
        observation["instruction"] = self._instruction
        if self.privileged_obs:
            observation["privileged"] = raw["object-state"].astype(np.float32)
        return observation

    # ----------------------------------------------------------------------------------- exact-resume state
    def get_task_state(self) -> Optional[Dict[str, Any]]:
        """What the next steps depend on besides the physics (JSON-serializable): episode counters, the
        instruction, each controller's episode-start pose (OSC pulls the arm's null space towards it) and Lift's
        cube size.
        None for tasks that cannot be captured exactly."""
        if self.task in TASKS_WITHOUT_EXACT_SNAPSHOT:
            return None
        controllers = {
            name: {field: np.asarray(getattr(controller, field)).tolist()
                   for field in CONTROLLER_EPISODE_FIELDS if getattr(controller, field, None) is not None}
            for name, controller in self._part_controllers()
        }
        state = {"timestep": int(self._env.timestep), "cur_time": float(self._env.cur_time),
                 "instruction": self._instruction, "controllers": controllers}
        if self._cube_half_size_range is not None:
            state["cube_half_size"] = np.asarray(self._env.cube.size).tolist()
        return state

    def set_task_state(self, task_state: Dict[str, Any]) -> None:
        self._env.timestep, self._env.cur_time = task_state["timestep"], task_state["cur_time"]
        self._env.done = self._env.timestep >= self._env.horizon
        self._instruction = task_state["instruction"]
        if "cube_half_size" in task_state:
            self._set_cube_half_size(task_state["cube_half_size"])
        for name, controller in self._part_controllers():
            for field, value in task_state["controllers"][name].items():
                setattr(controller, field, np.asarray(value))
            # Re-read joint and end-effector state from the restored simulation at the next step.
            controller.new_update = True

    def _part_controllers(self):
        for index, robot in enumerate(self._env.robots):
            for part, controller in robot.part_controllers.items():
                yield f"robot{index}/{part}", controller

    # ----------------------------------------------------------------------------------------- rendering
    def render(self) -> Optional[np.ndarray]:
        """``video_camera`` at ``video_size``, the right way up (``render_mode="rgb_array"``)."""
        if self.render_mode != "rgb_array":
            return None
        frame = self._env.sim.render(width=self.video_size, height=self.video_size, camera_name=self.video_camera)
        return np.ascontiguousarray(frame[::-1])

    def close(self) -> None:
        self._env.close()



@register_env_kind("robosuite")
def build_robosuite_env(cfg, render_mode: Optional[str]) -> gym.Env:
    """A ``RobosuiteEnv`` from a ``RobosuiteEnvConfig``; ends the episode on success with ``terminate_on_success``."""
    env = RobosuiteEnv(
        task=cfg.task, robot=cfg.robot, controller=cfg.controller, control_freq=cfg.control_freq,
        horizon=cfg.horizon, reward_shaping=cfg.reward_shaping, use_camera=cfg.use_camera,
        cameras=list(cfg.cameras), camera_size=cfg.camera_size, use_object_obs=cfg.use_object_obs,
        privileged_obs=cfg.privileged_obs,
        fast_render=cfg.fast_render, hard_reset=cfg.hard_reset, video_camera=cfg.video_camera,
        video_size=cfg.video_size, instruction_mode=cfg.instruction_mode, render_mode=render_mode,
        split=cfg.get("split", "all"),  # absent in older checkpoints
    )
    return SuccessInfo(env, distance_fn=None, threshold=0.0, terminate_on_success=cfg.terminate_on_success)

