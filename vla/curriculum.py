"""A difficulty curriculum (``curriculum.enabled=true``): stages of tabletop difficulty, widened as the periodic
evaluation's success rate rises.

A stage sets the half-width of the square objects are placed in (``placement_range``) and how many objects are
on the table (``num_objects``: the named one plus distractors). The env model is built once with the most
objects any stage uses (``env.max_objects``); each stage activates the first ``num_objects`` of them through
the env's ``set_difficulty``, which takes effect at each env's next reset, so episodes in progress finish
unchanged. The trainer evaluates on the current stage's difficulty and moves to the next stage after an
evaluation whose success rate reaches ``promote_at`` (once ``min_evals_per_stage`` evaluations ran at the
stage). The stage is saved in checkpoints, so a resumed run continues where it was.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List

from omegaconf import open_dict

from vla.errors import ConfigError

# Env kinds whose difficulty can change between episodes (a ``set_difficulty`` method).
CURRICULUM_ENV_KINDS = ("tabletop",)
# Resets tried per stage at launch: a stage whose objects do not fit its placement square fails here, not
# hours into the run when it is reached.
PROBE_RESETS = 20


@dataclass(frozen=True)
class Stage:
    placement_range: float
    num_objects: int


class Curriculum:
    """The stages, where the run is in them, and the env config of the current stage."""

    def __init__(self, cfg):
        ccfg, env_cfg = cfg.curriculum, cfg.env
        if env_cfg.kind not in CURRICULUM_ENV_KINDS:
            raise ConfigError(f"curriculum.enabled=true needs an env whose difficulty can change between "
                              f"episodes ({', '.join(CURRICULUM_ENV_KINDS)}: env=tabletop_*); env.kind="
                              f"{env_cfg.kind!r} has none. Set curriculum.enabled=false")
        if cfg.algo.name != "ppo":
            raise ConfigError(f"curriculum.enabled=true applies to PPO runs; algo={cfg.algo.name} learns from a "
                              "fixed dataset. Set curriculum.enabled=false")
        if not ccfg.stages:
            raise ConfigError("curriculum.enabled=true but curriculum.stages is empty; list the stages, easiest "
                              "first, e.g. curriculum=tabletop_widen or "
                              "'curriculum.stages=[{placement_range:0.1,num_objects:1},{placement_range:0.15,"
                              "num_objects:3}]'")
        if not 0.0 <= ccfg.promote_at <= 1.0:
            raise ConfigError(f"curriculum.promote_at={ccfg.promote_at} is an evaluation success rate: give a "
                              "value in [0, 1]")
        if ccfg.min_evals_per_stage < 1:
            raise ConfigError(f"curriculum.min_evals_per_stage={ccfg.min_evals_per_stage} must be at least 1")
        if cfg.eval.every_updates < 1 or cfg.eval.episodes < 1:
            raise ConfigError(f"curriculum.enabled=true advances on the periodic evaluation, which is off "
                              f"(eval.every_updates={cfg.eval.every_updates}, eval.episodes={cfg.eval.episodes}); "
                              "set eval.every_updates and eval.episodes to at least 1")
        self.stages: List[Stage] = [
            Stage(placement_range=float(env_cfg.placement_range if s.placement_range is None else s.placement_range),
                  num_objects=int(env_cfg.num_objects if s.num_objects is None else s.num_objects))
            for s in ccfg.stages]
        self.max_objects = max([s.num_objects for s in self.stages] + [env_cfg.get("max_objects") or 0])
        self.promote_at, self.min_evals_per_stage = ccfg.promote_at, ccfg.min_evals_per_stage
        self.base_env_cfg = env_cfg
        self.stage = 0
        self.evals_at_stage = 0  # evaluations run at the current stage
        for index in range(len(self.stages)):
            self._probe(index)

    def _probe(self, index: int) -> None:
        """Build the env of stage ``index`` (without cameras) and reset it a few times: an impossible stage
        (objects that do not fit, more objects than colours) fails at launch, naming the stage."""
        from envs import make_env

        probe_cfg = self.env_config(index)
        with open_dict(probe_cfg):
            probe_cfg.use_camera = False
        stage = self.stages[index]
        try:
            env = make_env(probe_cfg)
            try:
                for seed in range(PROBE_RESETS):
                    env.reset(seed=seed)
            finally:
                env.close()
        except ConfigError as error:
            raise ConfigError(f"curriculum.stages[{index}] (placement_range={stage.placement_range}, num_objects="
                              f"{stage.num_objects}) cannot be used: {error}") from error

    @property
    def difficulty(self) -> Dict[str, Any]:
        """The current stage as ``set_difficulty`` keyword arguments."""
        stage = self.stages[self.stage]
        return {"placement_range": stage.placement_range, "num_objects": stage.num_objects}

    def env_config(self, index: int = None):
        """The env config of stage ``index`` (default: the current one), its model built for every stage."""
        stage = self.stages[self.stage if index is None else index]
        env_cfg = copy.deepcopy(self.base_env_cfg)
        with open_dict(env_cfg):
            env_cfg.max_objects = self.max_objects
            env_cfg.placement_range = stage.placement_range
            env_cfg.num_objects = stage.num_objects
        return env_cfg

    def observe(self, success_rate: float) -> bool:
        """Count an evaluation at the current stage; True when it promotes the run to the next stage."""
        self.evals_at_stage += 1
        if (self.stage + 1 < len(self.stages) and self.evals_at_stage >= self.min_evals_per_stage
                and success_rate >= self.promote_at):
            self.stage += 1
            self.evals_at_stage = 0
            return True
        return False

    def metrics(self) -> Dict[str, float]:
        return {"curriculum/stage": float(self.stage), **{f"curriculum/{k}": float(v)
                                                          for k, v in self.difficulty.items()}}

    def state_dict(self) -> Dict[str, int]:
        return {"stage": self.stage, "evals_at_stage": self.evals_at_stage, "max_objects": self.max_objects}

    def load_state_dict(self, state: Dict[str, int], path) -> None:
        """Continue at a checkpoint's stage; refuses stages that do not fit it (the envs' saved states hold
        ``max_objects`` objects)."""
        if not 0 <= state["stage"] < len(self.stages) or state["max_objects"] != self.max_objects:
            raise ConfigError(f"checkpoint {path} is at curriculum stage {state['stage']} with models of "
                              f"{state['max_objects']} objects, but curriculum.stages has {len(self.stages)} "
                              f"stages of at most {self.max_objects} objects; resume with the stages the run was "
                              "started with")
        self.stage, self.evals_at_stage = int(state["stage"]), int(state["evals_at_stage"])
