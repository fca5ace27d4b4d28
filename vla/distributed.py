"""Rollouts on Ray (``distributed=ray``): env workers as Ray actors feeding the central learner.

Each ``RolloutWorker`` actor holds a vector env (an ``EnvRunner``, exactly what local training steps) and a
copy of the policy, with the frozen backbone loaded on the worker's own node. The learner (the ``Trainer``)
holds the backbone too and does the PPO update. Before every rollout the learner puts the trainable weights
(``model.trainable_state_dict()``: heads, trainable backbone layers, state normalizer) into Ray's object store
once, and every worker reads them from there. Each worker returns its rollout segment: the fields the local
storage holds (update inputs with the cached frozen features, actions, log-probs, values, raw rewards,
terminated/truncated, final values) plus its finished episodes and the raw states it saw; the learner
concatenates the segments along the env dimension, so GAE, reward scaling and the update are the same code as
in local training.

A worker that dies (its process killed, its node lost) is replaced by a fresh one: its episodes in progress
are dropped and counted (``reliability/worker_replacements``, ``reliability/dropped_episodes``), the
replacement collects that worker's slice of the rollout, and training continues. A worker whose env keeps
failing stops the run with the env's error, as in local training.

Checkpoints of a Ray run hold everything that trains; episodes in progress on the workers are not captured,
so a resumed run starts fresh episodes.

A curriculum (``curriculum.enabled``) reaches the workers too: ``set_difficulty`` goes to every worker's envs,
and a replacement worker starts at the current stage.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List, Optional

# Offscreen rendering for camera envs created inside the worker processes (as vla.cli sets for local runs).
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from ray.exceptions import RayActorError  # noqa: E402  (ActorDiedError is one)

from policies import actions_per_decision  # noqa: E402
from vla.actor_critic import ActorCritic  # noqa: E402
from vla.errors import ConfigError, EnvFailureError  # noqa: E402
from vla.ppo import RolloutStorage  # noqa: E402
from vla.trainer import CollectedRollout, EnvRunner, EpisodeTracker  # noqa: E402

# Update inputs that hold instruction ids; an id indexes the instruction table of the process that assigned it.
INSTRUCTION_ID_KEYS = ("in/instruction_id", "in/frozen/instruction_id")


class RolloutWorker:
    """One worker: a vector env and a policy copy. Runs as a Ray actor (``ray.remote(RolloutWorker)``)."""

    def __init__(self, cfg: Dict[str, Any], num_envs: int, seed: int, resume_hint: str):
        cfg = OmegaConf.create(cfg)
        torch.set_num_threads(cfg.distributed.worker_torch_threads)
        self.episodes = EpisodeTracker(num_envs)
        self.runner = EnvRunner(cfg.env, num_envs, seed, cfg.max_env_failures, self.episodes,
                                warn=lambda message: print(f"WARNING: {message}", flush=True),
                                resume_hint=resume_hint, action_chunk=actions_per_decision(cfg.policy),
                                gamma=cfg.algo.gamma, overlap=cfg.get("overlap_envs", False))
        # The learner's state normalizer is updated from the raw states every worker saw.
        self.runner.keep_raw_states = True
        self.reset(seed)
        self.model = ActorCritic.from_config(cfg, self.runner.observation_space, self.runner.action_space)
        self.storage = RolloutStorage(cfg.algo.num_steps, num_envs, torch.device("cpu"))

    def reset(self, seed: int) -> None:
        self.runner.reset(seed=seed)

    def spaces(self):
        return self.runner.observation_space, self.runner.action_space

    def set_difficulty(self, difficulty: Dict[str, Any]) -> None:
        self.runner.set_difficulty(**difficulty)

    def collect(self, weights: Dict[str, torch.Tensor], update_state_stats: bool) -> Dict[str, Any]:
        self.model.load_trainable_state_dict(weights, "the learner's weight broadcast")
        restarts, dropped = self.runner.env_restarts, self.runner.dropped_episodes
        rollout = self.runner.collect(self.model, self.storage, update_state_stats)
        episodes, self.episodes.finished = self.episodes.finished, []
        segment = {
            "data": self.storage.data,
            "next_value": rollout.next_value,
            "fresh_envs": rollout.fresh_envs,
            "metrics": rollout.metrics,
            "instruction_texts": list(self.model.backbone.instruction_texts),
            "episodes": episodes,
            "nonfinite_states": self.model.nonfinite_states,
            "nonfinite_rewards": self.runner.nonfinite_rewards,
            "env_restarts": self.runner.env_restarts - restarts,
            "dropped_episodes": self.runner.dropped_episodes - dropped,
        }
        self.model.nonfinite_states = self.runner.nonfinite_rewards = 0
        return segment

    def close(self) -> None:
        self.runner.close()


class RayRollouts:
    """The learner's side: starts the workers, broadcasts weights, gathers and concatenates their segments.

    Same interface as ``EnvRunner`` as far as the trainer is concerned (``collect``, ``reset``, counters)."""

    restores_snapshots = False  # episodes in progress on workers are not checkpointed
    next_obs: Dict[str, np.ndarray] = {}

    def __init__(self, cfg, num_envs: int, episodes: EpisodeTracker, warn: Callable[[str], None],
                 resume_hint: str, env_cfg=None):
        """``env_cfg``: the env config workers build (None: ``cfg.env``; a curriculum passes its stage's)."""
        dist = cfg.distributed
        if dist.num_workers < 1 or num_envs % dist.num_workers:
            raise ConfigError(f"num_envs={num_envs} cannot be split evenly between distributed.num_workers="
                              f"{dist.num_workers} workers; set distributed.envs_per_worker instead")
        self.cfg, self.episodes, self.warn, self.resume_hint = cfg, episodes, warn, resume_hint
        self.num_workers, self.num_envs = dist.num_workers, num_envs
        self.envs_per_worker = num_envs // dist.num_workers
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            ray.init(address=dist.address, include_dashboard=False, logging_level="warning")
        self.worker_class = ray.remote(num_cpus=dist.cpus_per_worker)(RolloutWorker)
        self.cfg_container = OmegaConf.to_container(cfg, resolve=True)
        if env_cfg is not None:
            self.cfg_container["env"] = OmegaConf.to_container(env_cfg, resolve=True)
        self.seed = cfg.seed
        self.env_restarts = self.dropped_episodes = self.nonfinite_rewards = 0
        self.worker_replacements = self.consecutive_replacements = 0
        self.workers = [self._start_worker(i, cfg.seed) for i in range(self.num_workers)]
        self.observation_space, self.action_space = ray.get(self.workers[0].spaces.remote())

    def _start_worker(self, index: int, seed: int):
        # Worker i's envs get the seeds env i * envs_per_worker + j would get in one local vector env.
        return self.worker_class.remote(self.cfg_container, self.envs_per_worker,
                                        seed + index * self.envs_per_worker, self.resume_hint)

    def reset(self, seed: int) -> None:
        """New episodes on every worker, seeded as one local vector env reset with ``seed`` would be."""
        self.seed = seed
        ray.get([worker.reset.remote(seed + i * self.envs_per_worker) for i, worker in enumerate(self.workers)])

    def snapshots(self) -> List[Optional[Dict[str, Any]]]:
        return []

    def set_difficulty(self, **difficulty) -> None:
        """Every worker's envs play at ``difficulty`` from their next episode on; replacements start there."""
        self.cfg_container["env"].update(difficulty)
        ray.get([worker.set_difficulty.remote(difficulty) for worker in self.workers])

    def collect(self, model: ActorCritic, storage: RolloutStorage, update_state_stats: bool) -> CollectedRollout:
        start = time.perf_counter()
        # One copy in the object store; every worker's call reads that copy.
        weights = ray.put({name: tensor.detach().cpu() for name, tensor in model.trainable_state_dict().items()})
        segments: List[Optional[Dict[str, Any]]] = [None] * self.num_workers
        pending = {worker.collect.remote(weights, update_state_stats): i for i, worker in enumerate(self.workers)}
        replaced = np.zeros(self.num_workers, dtype=bool)
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready)
            try:
                segments[index] = ray.get(ready)
            except RayActorError as error:
                self._replace_worker(index, error)
                replaced[index] = True
                pending[self.workers[index].collect.remote(weights, update_state_stats)] = index
        self.consecutive_replacements = 0
        return self._assemble(model, storage, segments, replaced, time.perf_counter() - start, update_state_stats)

    def _replace_worker(self, index: int, error: Exception) -> None:
        self.worker_replacements += 1
        self.consecutive_replacements += 1
        self.dropped_episodes += self.envs_per_worker
        detail = f"{type(error).__name__}: {error}".strip().splitlines()[0]
        if self.consecutive_replacements >= self.cfg.max_env_failures:
            raise EnvFailureError(f"rollout workers died {self.consecutive_replacements} times in a row; last "
                                  f"error: {detail}. {self.resume_hint}") from error
        self.warn(f"rollout worker {index} died ({detail}); starting a replacement, dropping its "
                  f"{self.envs_per_worker} episodes in progress")
        self.workers[index] = self._start_worker(index, self.seed + 7919 * self.worker_replacements)

    def _assemble(self, model: ActorCritic, storage: RolloutStorage, segments: List[Dict[str, Any]],
                  replaced: np.ndarray, wall_seconds: float, update_state_stats: bool) -> CollectedRollout:
        """The workers' segments, concatenated along the env dimension, into the learner's storage."""
        for segment in segments:
            # A worker numbers instructions in the order it met them; map its ids onto the learner's.
            to_learner_id = torch.as_tensor([model.instruction_id(text) for text in segment["instruction_texts"]],
                                            dtype=torch.long)
            for key in INSTRUCTION_ID_KEYS:
                if key in segment["data"]:
                    segment["data"][key] = to_learner_id[segment["data"][key]]
            for episode in segment["episodes"]:
                self.episodes.add(episode)
            model.nonfinite_states += segment["nonfinite_states"]
            self.nonfinite_rewards += segment["nonfinite_rewards"]
            self.env_restarts += segment["env_restarts"]
            self.dropped_episodes += segment["dropped_episodes"]
        device = storage.device
        data = {key: torch.cat([segment["data"][key] for segment in segments], dim=1).to(device)
                for key in segments[0]["data"]}
        # The learner's normalizers learn from the raw states every worker saw (unless they are held fixed,
        # as after init_from).
        for key, rms in (("raw_state", model.state_rms), ("raw_privileged", model.privileged_rms)):
            raw = data.pop(key, None)
            if raw is None or rms is None:
                continue
            raw = raw.reshape(-1, raw.shape[-1])
            finite = torch.isfinite(raw).all(dim=-1)
            if update_state_stats and model.norm_state and bool(finite.any()):
                rms.update(raw[finite].to(rms.mean.device))
        storage.data, storage.step = data, storage.num_steps
        fresh_envs = np.concatenate([segment["fresh_envs"] | replaced[i] for i, segment in enumerate(segments)])
        worker_metrics = [segment["metrics"] for segment in segments]
        metrics = {key: float(np.mean([m[key] for m in worker_metrics])) for key in worker_metrics[0]}
        metrics.update({"perf/rollout_seconds": wall_seconds,
                        "reliability/worker_replacements": float(self.worker_replacements)})
        next_value = torch.cat([segment["next_value"] for segment in segments]).to(device)
        return CollectedRollout(next_value, fresh_envs, metrics)

    def close(self) -> None:
        for worker in self.workers:
            try:
                ray.get(worker.close.remote())  # closes the worker's env processes
            except RayActorError:
                pass  # died already
            ray.kill(worker)
        if self.owns_ray:
            ray.shutdown()
