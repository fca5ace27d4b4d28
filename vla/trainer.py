"""The PPO training loop: collect a rollout from vector envs, compute GAE, update, log, checkpoint."""

from __future__ import annotations

import shlex
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from gymnasium import spaces
from omegaconf import OmegaConf

from envs import make_vector_env
from envs.contract import EnvContractError
from envs.registry import SplitVectorEnv
from envs.wrappers import chunk_stats
from policies import actions_per_decision
from policies.gaussian import set_action_std
from vla import checkpoint as ckpt
from vla.actor_critic import ActorCritic
from vla.backbones.towers import IMAGE_TOWER_WEIGHTS
from vla.curriculum import Curriculum
from vla.errors import ConfigError, EnvFailureError, TrainingDivergedError
from vla.evaluate import evaluate_policy, report_scalars, split_env_config
from vla.logger import RunLogger
from vla.normalize import RewardScaler
from vla.ppo import PPO, RolloutStorage, compute_gae, frozen_copy
from vla.seeding import restore_rng, rng_json, rng_tensors, seed_everything


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_torch_threads(count: int) -> None:
    """``torch_threads`` of vla-eval and vla-demos: refused below 1, with the fix."""
    if count < 1:
        raise ConfigError(f"torch_threads={count}; use 1 or more")
    torch.set_num_threads(count)


def load_initial_weights(model: ActorCritic, path: str, state_dim: int, action_dim: int) -> Dict[str, Any]:
    """``init_from``: load the trainable weights and normalizer statistics of a BC or PPO checkpoint (or a run
    directory's latest) into ``model``; refuses one made for another backbone, state or action size (naming
    both sides) or with other heads, except for the auxiliary privileged-state head, left out where this run has
    none. A checkpoint of a frozen image tower may start a run that fine-tunes it (not the reverse). Returns the
    loaded checkpoint."""
    loaded = ckpt.load_checkpoint(path)
    identity, package_tower = model.backbone.identity(), {}
    if identity.get("image_tower_trained") and "image_tower_trained" not in (loaded["state"].get("backbone") or {}):
        # A policy trained on the frozen tower starts a run that fine-tunes it: the tower starts from the
        # package's weights, the ones that policy saw.
        identity = {key: value for key, value in identity.items() if key != "image_tower_trained"}
        package_tower = {name: tensor for name, tensor in model.trainable_state_dict().items()
                         if name.startswith(IMAGE_TOWER_WEIGHTS)}
        print(f"init_from: {loaded['path']} was trained on the frozen image tower; this run fine-tunes it from "
              "the package's weights", flush=True)
    ckpt.check_compatible(loaded["state"], backbone_identity=identity, state_dim=state_dim,
                          action_dim=action_dim, path=loaded["path"])
    trained_norm_state = OmegaConf.create(loaded["config_yaml"]).algo.get("norm_state")
    if trained_norm_state is not None and trained_norm_state != model.norm_state:
        # The loaded policy would see raw states where it learned normalized ones (or the reverse).
        raise ckpt.CheckpointError(f"checkpoint {loaded['path']} was trained with algo.norm_state="
                                   f"{str(trained_norm_state).lower()}; set the same here")
    weights = loaded["weights"]
    # The auxiliary privileged-state head (and the statistics of the privileged state, where nothing else here
    # reads it) never acts: a run without the auxiliary loss starts from the same policy without them.
    unused = ([] if model.privileged_aux is not None else ["privileged_aux."]) + (
        [] if model.privileged_rms is not None else ["privileged_rms."])
    left_out = [name for name in weights if name.startswith(tuple(unused))]
    if left_out:
        weights = {name: tensor for name, tensor in weights.items() if name not in left_out}
        print(f"init_from: {', '.join(sorted({n.split('.')[0] for n in left_out}))} of {loaded['path']} not "
              "loaded (algo.privileged_aux_coef=0 here)", flush=True)
    model.load_trainable_state_dict({**package_tower, **weights}, str(loaded["path"]))
    return loaded


def stack_obs(observations: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """A list of single-env observation dicts -> one batched dict."""
    return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}


def set_obs_slice(full: Dict[str, Any], part: Dict[str, Any], where: slice) -> Dict[str, Any]:
    """``full`` with envs ``where`` replaced by the batched ``part``, as a new dict of new arrays (tensors made
    from the old arrays may share their memory: the storage keeps some)."""
    if where.start == 0 and where.stop == len(next(iter(full.values()))):
        return part
    merged = {}
    for key, value in full.items():
        if isinstance(value, tuple):
            merged[key] = value[:where.start] + tuple(part[key]) + value[where.stop:]
        else:
            merged[key] = np.concatenate([value[:where.start], part[key], value[where.stop:]])
    return merged


def resume_command(run_dir: Path) -> str:
    """The command that continues ``run_dir``: the overrides it was launched with (hydra's
    ``.hydra/overrides.yaml`` in the run directory) plus ``resume=<run_dir>``."""
    overrides: List[str] = []
    try:
        launched = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
        overrides = [str(item) for item in launched if not str(item).startswith(("resume=", "hydra."))]
    except Exception:  # no (readable) hydra record, e.g. a run made through the Python API
        pass
    return " ".join(shlex.quote(part) for part in ["vla-train", *overrides, f"resume={run_dir}"])


class EpisodeTracker:
    """Return, length and success of finished episodes (success = ``info["success"]`` on the final step)."""

    def __init__(self, num_envs: int, window: int = 100):
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, dtype=np.int64)
        self.finished: List[Dict[str, float]] = []  # since the last drain
        self.recent = deque(maxlen=window)  # for the progress bar

    def step(self, rewards: np.ndarray, done: np.ndarray, final_success: np.ndarray, steps=1) -> None:
        """``steps``: env steps each env ran in this step (an action chunk runs several)."""
        self.returns += rewards
        self.lengths += steps
        for i in np.flatnonzero(done):
            self.add({"return": float(self.returns[i]), "length": int(self.lengths[i]),
                      "success": float(final_success[i])})
            self.returns[i], self.lengths[i] = 0.0, 0

    def add(self, episode: Dict[str, float]) -> None:
        """A finished episode (also how a rollout worker's episodes reach the learner's tracker)."""
        self.finished.append(episode)
        self.recent.append(episode)

    def drop_in_progress(self) -> None:
        """Forget the episodes in progress (their envs were restarted)."""
        self.returns[:] = 0.0
        self.lengths[:] = 0

    def drain(self) -> Dict[str, Optional[float]]:
        episodes, self.finished = self.finished, []
        if not episodes:
            return {}
        return {
            "train/success_rate": float(np.mean([e["success"] for e in episodes])),
            "train/episode_length": float(np.mean([e["length"] for e in episodes])),
            "train/episode_return": float(np.mean([e["return"] for e in episodes])),
            "train/episodes": float(len(episodes)),
        }

    def summary(self) -> Dict[str, str]:
        if not self.recent:
            return {}
        return {"success": f"{np.mean([e['success'] for e in self.recent]):.2f}",
                "return": f"{np.mean([e['return'] for e in self.recent]):.1f}"}


class RolloutAbandoned(Exception):
    """The envs were restarted mid-rollout: the partial rollout is discarded and collected again."""


@dataclass
class CollectedRollout:
    """What a rollout leaves besides the storage it filled."""

    next_value: torch.Tensor  # (N,) V(the observation the next rollout starts from), for GAE's last step
    fresh_envs: np.ndarray  # (N,) bool: envs whose episodes were dropped (restarted) during this collection
    metrics: Dict[str, float]  # where the time went (perf/*), and what else the rollout source reports


class EnvRunner:
    """A vector env stepped by the policy, rollout after rollout. The trainer holds one (distributed=none); with
    distributed=ray every rollout worker holds one (vla/distributed.py).

    Rewards go into the storage as the env returned them (NaN/inf zeroed and counted in ``nonfinite_rewards``):
    the learner scales them over the whole rollout, so local and distributed rollouts share one normalizer.
    A worker that raises or dies rebuilds the vector env; the episodes in progress are dropped and counted,
    and the rollout starts over. After ``max_env_failures`` failures without a completed rollout in between,
    ``EnvFailureError`` carries the env's own error.

    With ``action_chunk`` > 1 every env step runs a chunk of that many actions (``envs.wrappers.ActionChunk``):
    one stored transition per chunk, its reward discounted within the chunk, and ``discount`` = gamma^k and
    ``env_steps`` = k stored beside it (k is smaller when the episode ended inside the chunk).
    """

    restores_snapshots = True  # checkpoints resume its episodes in progress exactly

    def __init__(self, env_cfg, num_envs: int, seed: int, max_env_failures: int, episodes: EpisodeTracker,
                 warn: Callable[[str], None], resume_hint: str, action_chunk: int = 1, gamma: float = 1.0,
                 overlap: bool = False):
        self.env_cfg, self.num_envs, self.seed = env_cfg, num_envs, seed
        self.overlap = overlap
        self.max_env_failures, self.episodes = max_env_failures, episodes
        self.warn, self.resume_hint = warn, resume_hint
        self.action_chunk, self.gamma = action_chunk, gamma
        self.envs = self._make_envs()
        self.next_obs: Dict[str, np.ndarray] = {}
        self.env_restarts = self.dropped_episodes = self.consecutive_env_failures = self.nonfinite_rewards = 0
        # Also store the raw (unnormalized) states as "raw_state": on a Ray worker, the learner updates its
        # state normalizer from them.
        self.keep_raw_states = False

    @property
    def observation_space(self):
        return self.envs.single_observation_space

    def _make_envs(self):
        if self.overlap:
            return SplitVectorEnv(self.env_cfg, self.num_envs, action_chunk=self.action_chunk, gamma=self.gamma)
        return make_vector_env(self.env_cfg, self.num_envs, action_chunk=self.action_chunk, gamma=self.gamma)

    @property
    def action_space(self):
        """One env step's action space (a chunk's actions are that, ``action_chunk`` times over)."""
        space = self.envs.single_action_space
        if self.action_chunk == 1:
            return space
        dim = space.shape[0] // self.action_chunk
        return spaces.Box(space.low[:dim], space.high[:dim], dtype=space.dtype)

    def reset(self, seed: int) -> None:
        self.next_obs, _ = self.envs.reset(seed=seed)

    def snapshots(self) -> List[Optional[Dict[str, Any]]]:
        """Exact simulator states of the episodes in progress (None where an env cannot capture its state)."""
        return list(self.envs.call("get_snapshot"))

    def set_difficulty(self, **difficulty) -> None:
        """The env's ``set_difficulty`` (a curriculum stage) on every env, from its next episode on; envs rebuilt
        after a failure start at it too."""
        self.envs.call("set_difficulty", **difficulty)
        self.env_cfg = OmegaConf.merge(self.env_cfg, difficulty)

    def restore(self, snapshots: List[Dict[str, Any]], next_obs: Dict[str, np.ndarray]) -> None:
        self.envs.reset(seed=self.seed)
        self.envs.call("restore_snapshot", snapshots)
        self.next_obs = next_obs

    def collect(self, model: ActorCritic, storage: RolloutStorage, update_state_stats: bool) -> CollectedRollout:
        restarts_before = self.env_restarts
        while True:
            try:
                timings = self._collect_once(model, storage, update_state_stats)
                break
            except RolloutAbandoned:
                continue
        with torch.no_grad():
            next_value = model.value(model.to_tensors(self.next_obs))
        fresh = np.full(self.num_envs, self.env_restarts > restarts_before)
        return CollectedRollout(next_value, fresh, timings)

    def _act(self, model: ActorCritic, obs: Dict[str, Any], update_state_stats: bool) -> Dict[str, Any]:
        """The policy's step on a batch of observations: what the env gets and what the storage keeps."""
        stored: Dict[str, torch.Tensor] = {}
        if self.keep_raw_states:
            stored["raw_state"] = torch.as_tensor(obs["state"])
            if "privileged" in obs and model.privileged_rms is not None:
                stored["raw_privileged"] = torch.as_tensor(obs["privileged"])
        out = model.act(model.to_tensors(obs, update_stats=update_state_stats))
        stored.update({f"in/{k}": v for k, v in out.update_inputs.items()})
        stored.update(action=out.action, log_prob=out.log_prob, value=out.value)
        return {"actions": out.action.cpu().numpy(), "stored": stored}

    def _transition(self, model: ActorCritic, result, device: torch.device) -> Dict[str, Any]:
        """One vector-env step's result -> the storage's fields and the episode tracker's arrays."""
        _, reward, terminated, truncated, info = result
        if not np.isfinite(reward).all():
            self.nonfinite_rewards += int((~np.isfinite(reward)).sum())
            reward = np.nan_to_num(reward, nan=0.0, posinf=0.0, neginf=0.0)
        stored = {"reward": torch.as_tensor(reward, dtype=torch.float32, device=device),
                  "terminated": torch.as_tensor(terminated, device=device),
                  "truncated": torch.as_tensor(truncated, device=device)}
        episode_reward, steps = reward, np.ones(len(reward), dtype=np.int64)
        if self.action_chunk > 1:
            steps, episode_reward = chunk_stats(info, reward)
            episode_reward = np.nan_to_num(episode_reward, nan=0.0, posinf=0.0, neginf=0.0)
            stored["discount"] = torch.as_tensor(self.gamma ** steps, dtype=torch.float32, device=device)
            stored["env_steps"] = torch.as_tensor(steps, device=device)
        final_values = torch.zeros(len(reward), device=device)
        cut = np.flatnonzero(truncated & ~terminated)
        if len(cut):
            # The time limit cut these episodes: their return continues past the cut, so bootstrap from the
            # value of the observation the episode ended in (not the reset observation we now hold).
            final_obs = model.to_tensors(stack_obs([info["final_obs"][i] for i in cut]))
            final_values[cut] = model.value(final_obs)
        stored["final_value"] = final_values
        done = terminated | truncated
        final_success = np.zeros(len(reward), dtype=bool)
        if done.any():
            final_success = np.asarray(info["final_info"].get("success", final_success), dtype=bool)
        return {"stored": stored, "episode": (episode_reward, done, final_success, steps)}

    def _collect_once(self, model: ActorCritic, storage: RolloutStorage,
                      update_state_stats: bool) -> Dict[str, float]:
        """Fill the storage. With ``overlap`` the envs are two groups half a step apart: while one group's
        workers step, the policy infers for the other group (its next actions), so env stepping and inference
        overlap; the stored rollout is the same (num_steps, num_envs) batch either way."""
        storage.reset()
        device = storage.device
        groups = self.envs.slices if self.overlap else [slice(0, self.num_envs)]
        env_time = model_time = 0.0

        def act_and_send(group: int) -> Dict[str, Any]:
            part = groups[group]
            acted = self._act(model, {k: v[part] for k, v in self.next_obs.items()}, update_state_stats)
            if self.overlap:
                self.guarded(self.envs.groups[group].step_async, acted["actions"])
            return acted

        t0 = time.perf_counter()
        pending = [act_and_send(group) for group in range(len(groups))]
        model_time += time.perf_counter() - t0
        for t in range(storage.num_steps):
            fields: List[Dict[str, torch.Tensor]] = []
            episodes = []
            for group, part in enumerate(groups):
                t1 = time.perf_counter()
                if self.overlap:
                    result = self.guarded(self.envs.groups[group].step_wait)
                else:
                    result = self.guarded(self.envs.step, pending[group]["actions"])
                t2 = time.perf_counter()
                self.next_obs = set_obs_slice(self.next_obs, result[0], part)
                transition = self._transition(model, result, device)
                fields.append({**pending[group]["stored"], **transition["stored"]})
                episodes.append(transition["episode"])
                if self.overlap and t + 1 < storage.num_steps:
                    pending[group] = act_and_send(group)  # infers while the other group's workers step
                model_time += time.perf_counter() - t2
                env_time += t2 - t1
            storage.add(**{key: torch.cat([f[key] for f in fields]) for key in fields[0]})
            self.episodes.step(*(np.concatenate(parts) for parts in zip(*episodes)))
            if not self.overlap and t + 1 < storage.num_steps:
                t3 = time.perf_counter()
                pending = [act_and_send(0)]
                model_time += time.perf_counter() - t3
        self.consecutive_env_failures = 0
        return {"perf/env_seconds": env_time, "perf/inference_seconds": model_time}

    def guarded(self, call: Callable, *args):
        """``call(*args)`` on the envs (step, step_async, step_wait), surviving a worker raising or dying (see
        the class docstring)."""
        try:
            return call(*args)
        except EnvContractError:  # the env breaks its contract: restarting it would only repeat that
            raise
        except Exception as error:  # a worker's exception, or a broken pipe from a killed worker
            self.consecutive_env_failures += 1
            self.env_restarts += 1
            self.dropped_episodes += self.num_envs
            detail = f"{type(error).__name__}: {error}".strip()
            env_name = self.env_cfg.get("id") or self.env_cfg.get("task") or self.env_cfg.kind
            if self.consecutive_env_failures >= self.max_env_failures:
                raise EnvFailureError(
                    f"env {env_name!r} failed {self.consecutive_env_failures} times in a row; last error: "
                    f"{detail}. {self.resume_hint}") from error
            self.warn(f"env {env_name!r} worker failed ({detail}); restarting the envs, dropping "
                      f"{self.num_envs} episodes in progress")
            try:
                self.envs.close(terminate=True)
            except Exception:  # the pipes of a dead worker are broken already
                pass
            self.envs = self._make_envs()
            self.reset(seed=self.seed + 7919 * self.env_restarts)
            self.episodes.drop_in_progress()
            raise RolloutAbandoned from error

    def close(self) -> None:
        self.envs.close()


class Trainer:
    def __init__(self, cfg, run_dir: Path):
        self.cfg = cfg
        self.algo = cfg.algo
        if cfg.dataset is not None:
            raise ConfigError(f"dataset= is read by behaviour cloning (algo=bc), not by algo={cfg.algo.name}; to "
                              "start PPO from demonstrations, clone them first and pass init_from=<BC run>")
        std = self.algo.init_action_std
        if std is not None and (not cfg.init_from or not std > 0):
            raise ConfigError(f"algo.init_action_std={std} sets the std of a policy loaded with init_from= and must "
                              "be positive; for a fresh policy set policy.log_std_init instead")
        torch.set_num_threads(cfg.torch_threads)
        torch.use_deterministic_algorithms(cfg.deterministic_torch)
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        distributed = cfg.distributed
        if distributed.name not in ("none", "ray"):
            raise ConfigError(f"distributed={distributed.name!r}; use 'none' or 'ray'")
        self.num_envs = cfg.num_envs
        if distributed.name == "ray" and distributed.envs_per_worker is not None:
            self.num_envs = distributed.num_workers * distributed.envs_per_worker
        # Transitions per update; each runs ``action_chunk`` env steps (fewer when an episode ends mid-chunk).
        self.batch_size = self.algo.num_steps * self.num_envs
        self.action_chunk = actions_per_decision(cfg.policy)
        self.num_updates = max(1, cfg.total_env_steps // (self.batch_size * self.action_chunk))

        if cfg.eval.heldout:
            split_env_config(cfg.env, "heldout")  # an env without splits fails now, not at the first evaluation
        resume_from = ckpt.load_checkpoint(cfg.resume) if cfg.resume else None
        # On resume, everything (checkpoints, tensorboard) continues in the original run directory.
        self.run_dir = ckpt.run_directory(resume_from["path"]) if resume_from else run_dir
        self.checkpoint_root = self.run_dir / "checkpoints"
        # Training and evaluation envs run at the curriculum's current stage (on resume: the checkpoint's).
        self.curriculum = Curriculum(cfg) if cfg.curriculum.enabled else None
        if resume_from is not None and "curriculum" in resume_from["state"]:
            if self.curriculum is None:  # its envs hold more objects than these: the states would not fit
                raise ConfigError(f"checkpoint {resume_from['path']} is from a run with a curriculum; resume with "
                                  "the same curriculum settings (curriculum=... or curriculum.enabled=true ...)")
            self.curriculum.load_state_dict(resume_from["state"]["curriculum"], resume_from["path"])
        env_cfg = self.curriculum.env_config() if self.curriculum is not None else cfg.env

        self.episodes = EpisodeTracker(self.num_envs)
        resume_hint = (f"The last checkpoint in {self.checkpoint_root} is intact; fix the env and resume with "
                       f"`{resume_command(self.run_dir)}`")
        if distributed.name == "ray":
            from vla.distributed import RayRollouts

            self.rollouts = RayRollouts(cfg, self.num_envs, self.episodes, self._warn, resume_hint, env_cfg)
        else:
            self.rollouts = EnvRunner(env_cfg, self.num_envs, cfg.seed, cfg.max_env_failures, self.episodes,
                                      self._warn, resume_hint, self.action_chunk, self.algo.gamma,
                                      overlap=cfg.overlap_envs)
        obs_space, action_space = self.rollouts.observation_space, self.rollouts.action_space
        try:
            self.model = ActorCritic.from_config(cfg, obs_space, action_space).to(self.device)
        except BaseException:  # a config the model refuses: stop the env workers cleanly before saying why
            self.rollouts.close()
            raise
        self.state_dim = int(obs_space["state"].shape[0])
        self.action_dim = int(np.prod(action_space.shape))
        # Rewards of chunks are already discounted sums over their steps: the return's discount per transition.
        self.reward_scaler = RewardScaler(self.num_envs, self.algo.gamma ** self.action_chunk,
                                          self.algo.clip_norm).to(self.device)
        initialized_from = None
        # A run started from a checkpoint keeps that checkpoint's state normalizer fixed: updating it would
        # change the inputs the loaded policy was trained on (a BC policy's statistics come from the demos; a
        # first rollout as large as the dataset would move them halfway to the new states).
        self.freeze_state_norm = cfg.init_from is not None
        if cfg.init_from and resume_from is None:
            initialized_from = load_initial_weights(self.model, cfg.init_from, self.state_dim, self.action_dim)
            if self.algo.init_action_std is not None:
                set_action_std(self.model.expert, self.algo.init_action_std)
            scaler = initialized_from["trainer"].get("reward_scaler")  # a PPO checkpoint's return statistics
            if scaler is not None:
                self.reward_scaler.return_rms.load_state_dict(
                    {k[len("return_rms."):]: v for k, v in scaler.items() if k.startswith("return_rms.")})
        # The policy this run starts from, frozen, for the KL(pi_init || pi) term (on resume: from the checkpoint).
        reference = frozen_copy(self.model) if self.algo.init_kl_coef > 0 else None
        self.ppo = PPO(self.algo, self.model, reference)
        self.storage = RolloutStorage(self.algo.num_steps, self.num_envs, self.device)
        self.update_index = 0
        self.global_step = 0
        self.rollout_env_steps = 0  # env steps the last rollout ran
        self.history: List[Dict[str, float]] = []
        self.best_eval: Optional[Dict[str, float]] = None  # success rate and return of checkpoints/best
        self.final_report: Optional[Dict[str, Any]] = None
        self.stop_signal: Optional[int] = None
        self.consecutive_nonfinite = 0
        self.alerted: set = set()

        exact_resume = True
        if resume_from is not None:
            exact_resume = self._restore(resume_from)
        else:
            self.rollouts.reset(seed=cfg.seed)
        self.logger = RunLogger(self.run_dir, self.num_updates * self.batch_size * self.action_chunk,
                                self.global_step, cfg.progress)
        if initialized_from is not None:
            self.logger.message(f"initialized from {initialized_from['path']} (algo "
                                f"{initialized_from['state'].get('algo', 'ppo')}, step "
                                f"{initialized_from['state']['global_step']})")
        # (robosuite's "all" and "train" are the same: nothing of its held-out split appears in either.)
        if cfg.eval.heldout and cfg.env.kind == "tabletop" and cfg.env.split != "train":
            self.logger.message(f"WARNING: eval.heldout=true with env.split={cfg.env.split}: training sees the "
                                "held-out colours and paraphrases too; train with env.split=train to measure "
                                "generalization")
        if cfg.env.kind == "robosuite" and cfg.env.terminate_on_success and cfg.env.reward_shaping:
            self.logger.message("WARNING: env.terminate_on_success=true with robosuite's shaped reward: its rewards "
                                "are positive, so ending the episode on success gives up the reward that staying "
                                "near the goal keeps earning, and PPO can learn not to finish; train with "
                                "env.terminate_on_success=false (robosuite's convention, as "
                                "experiment=robosuite_lift_state does)")
        if self.curriculum is not None:
            last = len(self.curriculum.stages) - 1
            self.logger.message(f"curriculum: stage {self.curriculum.stage} (stages 0-{last}): "
                                f"{self._describe_stage()}")
        if resume_from is not None:
            self.logger.message(f"resumed from {resume_from['path']} at env step {self.global_step}")
            if not exact_resume:
                self.logger.message("env states could not be restored exactly (different num_envs or an env "
                                    "without snapshot support): episodes in progress were dropped")
        else:
            self.logger.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```", 0)

    # ------------------------------------------------------------------------------------------ rollout
    @property
    def env_restarts(self) -> int:
        return self.rollouts.env_restarts

    @property
    def dropped_episodes(self) -> int:
        return self.rollouts.dropped_episodes

    def _warn(self, message: str) -> None:
        self.logger.message(f"WARNING at step {self.global_step}: {message}")

    def collect_rollout(self) -> CollectedRollout:
        """Fill the storage with the next rollout (locally or from the Ray workers), then scale its rewards."""
        rollout = self.rollouts.collect(self.model, self.storage,
                                        update_state_stats=self.algo.norm_state and not self.freeze_state_norm)
        # Episodes dropped by an env restart must not pass their discounted return on to new ones.
        self.reward_scaler.discounted_return[torch.as_tensor(rollout.fresh_envs, device=self.device)] = 0.0
        if self.algo.norm_reward:
            data = self.storage.data
            done = data["terminated"] | data["truncated"]
            for t in range(self.storage.num_steps):
                data["reward"][t] = self.reward_scaler(data["reward"][t], done[t])
        self.rollout_env_steps = (int(self.storage.data["env_steps"].sum()) if "env_steps" in self.storage.data
                                  else self.batch_size)
        self.global_step += self.rollout_env_steps
        return rollout

    # ------------------------------------------------------------------------------------------- update
    def train_one_update(self) -> Dict[str, float]:
        start = time.perf_counter()
        self.ppo.set_progress(self.update_index / self.num_updates)
        rollout = self.collect_rollout()
        t_update = time.perf_counter()
        data = self.storage.data
        advantages, returns = compute_gae(data["reward"], data["value"], data["terminated"], data["truncated"],
                                          data["final_value"], rollout.next_value, self.algo.gamma,
                                          self.algo.gae_lambda, data.get("discount"))
        critic_only = self.update_index < self.algo.critic_warmup_updates
        bad_inputs = self.model.nonfinite_states + self.rollouts.nonfinite_rewards
        if bad_inputs:
            stats = None  # a rollout with NaN/inf inputs would teach the policy nonsense: skip its update
        else:
            stats = self.ppo.update(self.storage, advantages, returns, critic_only=critic_only)
        self.check_finite(stats, bad_inputs)
        self.update_index += 1
        now = time.perf_counter()
        metrics = {
            "reliability/nonfinite_inputs": float(bad_inputs),
            "reliability/env_restarts": float(self.env_restarts),
            "reliability/dropped_episodes": float(self.dropped_episodes),
            "reliability/skipped_minibatches": float(stats.skipped_steps) if stats else float("nan"),
            "perf/sps": self.rollout_env_steps / (now - start),
            "perf/update_seconds": now - t_update,
            **rollout.metrics,
            **self.episodes.drain(),
            **(self.curriculum.metrics() if self.curriculum is not None else {}),
        }
        if stats is None:
            return metrics
        metrics.update({
            "losses/policy": stats.policy_loss, "losses/value": stats.value_loss,
            "losses/entropy": stats.entropy, "losses/approx_kl": stats.approx_kl,
            "losses/clip_fraction": stats.clip_fraction, "losses/explained_variance": stats.explained_variance,
            "losses/grad_norm": stats.grad_norm, "losses/update_epochs": stats.epochs,
            "losses/init_kl": stats.init_kl,
            "losses/privileged_aux": stats.privileged_aux,
            "policy/action_std": stats.action_std,
            "charts/learning_rate": self.ppo.optimizer.param_groups[0]["lr"],
            "charts/value_learning_rate": self.ppo.optimizer.param_groups[1]["lr"],
        })
        return metrics

    def check_finite(self, stats, bad_inputs: int) -> None:
        """Count updates ruined by NaN/inf; stop the run after ``max_nonfinite_updates`` in a row."""
        ruined = bad_inputs > 0 or (stats is not None and stats.optimizer_steps == 0 and stats.skipped_steps > 0)
        self.model.nonfinite_states = self.rollouts.nonfinite_rewards = 0
        if not ruined:
            self.consecutive_nonfinite = 0
            return
        self.consecutive_nonfinite += 1
        what = (f"{bad_inputs} non-finite states/rewards in the rollout" if bad_inputs
                else "every minibatch had a non-finite loss or gradient")
        self.logger.message(f"WARNING at step {self.global_step}: update skipped: {what}")
        if self.consecutive_nonfinite >= self.cfg.max_nonfinite_updates:
            raise TrainingDivergedError(
                f"{self.consecutive_nonfinite} updates in a row were skipped for NaN/inf ({what}); stopping. "
                f"The last checkpoint in {self.checkpoint_root} has finite weights. Check the env's observations "
                "and rewards, or lower algo.learning_rate; raise max_nonfinite_updates to tolerate more.")

    def train(self) -> List[Dict[str, float]]:
        """Run until ``total_env_steps``, then evaluate; returns the per-update metrics (also in tensorboard)."""
        every_eval = self.cfg.eval.every_updates
        previous_handlers = {sig: signal.signal(sig, self._on_stop_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.update_index < self.num_updates and self.stop_signal is None:
                metrics = self.train_one_update()
                metrics["charts/update"] = float(self.update_index)
                self.history.append(metrics)
                self.logger.scalars(metrics, self.global_step)
                self.watch(metrics)
                self.logger.progress(self.rollout_env_steps, {"sps": f"{metrics['perf/sps']:.0f}",
                                                       **self.episodes.summary()})
                if every_eval and (self.update_index % every_eval == 0 or self.update_index == self.num_updates):
                    self.evaluate_and_keep_best()
                if self.update_index % self.cfg.checkpoint.every_updates == 0 or \
                        self.update_index == self.num_updates or self.stop_signal is not None:
                    self.save()
            if self.stop_signal is not None:
                self.logger.message(f"stopped by {signal.Signals(self.stop_signal).name} at env step "
                                    f"{self.global_step}; resume with `{resume_command(self.run_dir)}`")
            elif self.cfg.eval.at_end and self.cfg.eval.episodes > 0:
                self.final_report = self.evaluate("final", record=self.cfg.eval.video_episodes)
                if not every_eval:  # the only candidate; with periodic evaluations the last one ranked it
                    self.keep_if_best(self.final_report)
                self.log_hparams(self.final_report)
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            self.close()
        return self.history

    def _on_stop_signal(self, signum, frame) -> None:
        """First SIGINT/SIGTERM: finish the current update, checkpoint, stop. Second: abandon the update now
        (the last checkpoint stands)."""
        if self.stop_signal is not None:
            raise KeyboardInterrupt
        self.stop_signal = signum
        self.logger.message(f"{signal.Signals(signum).name}: finishing the current update, then writing a "
                            "checkpoint (send it again to abandon the update)")

    # --------------------------------------------------------------------------------------- evaluation
    def evaluate(self, name: str, record: int = 0, seed: Optional[int] = None) -> Dict[str, Any]:
        """Evaluate the current policy on fixed seeds (eval.seed, or seed); report to <run>/eval/<name>/, eval/* tags."""
        ecfg = self.cfg.eval
        identity = {"path": str(self.checkpoint_root), "global_step": self.global_step,
                    "update": self.update_index, "backbone": self.model.backbone.identity()}
        env_cfg = self.cfg.env
        if self.curriculum is not None:  # evaluation runs at the current stage's difficulty
            env_cfg = self.curriculum.env_config()
            identity["curriculum"] = {"stage": self.curriculum.stage, **self.curriculum.difficulty}
        report = evaluate_policy(
            self.model, env_cfg, self.run_dir / "eval" / name, episodes=ecfg.episodes, seed=ecfg.seed if seed is None else seed,
            num_envs=ecfg.num_envs or self.num_envs, deterministic=ecfg.deterministic, checkpoint=identity,
            config=OmegaConf.to_container(self.cfg, resolve=True), record=record, fps=ecfg.video_fps,
            writer=self.logger.writer, step=self.global_step, heldout=ecfg.heldout)
        self.logger.scalars(report_scalars(report), self.global_step)
        heldout = (f"; held-out split: success rate {report['heldout']['success_rate']:.1%}"
                   if "heldout" in report else "")
        self.logger.message(f"eval at step {self.global_step}: success rate {report['success_rate']:.1%}, "
                            f"episode length {report['episode_length_mean']:.1f}, "
                            f"return {report['episode_return_mean']:.2f}{heldout}")
        return report

    def evaluate_and_keep_best(self) -> None:
        report = self.evaluate(f"update_{self.update_index:06d}", seed=self.cfg.eval.select_seed)
        self.keep_if_best(report)
        if self.curriculum is not None and self.update_index < self.num_updates:  # none left to play a new stage
            self.advance_curriculum(report["success_rate"])

    def _describe_stage(self) -> str:
        return ", ".join(f"{key} {value:g}" for key, value in self.curriculum.difficulty.items())

    def advance_curriculum(self, success_rate: float) -> None:
        """Count an evaluation at the current stage; on promotion, every env plays the next stage from its next
        episode on."""
        stage = self.curriculum.stage
        if not self.curriculum.observe(success_rate):
            return
        self.rollouts.set_difficulty(**self.curriculum.difficulty)
        self.logger.scalars(self.curriculum.metrics(), self.global_step)
        self.logger.message(f"curriculum: eval success rate {success_rate:.1%} >= {self.curriculum.promote_at:.0%}"
                            f" at stage {stage}: promoted to stage {self.curriculum.stage} (stages 0-"
                            f"{len(self.curriculum.stages) - 1}): {self._describe_stage()}")

    def keep_if_best(self, report: Dict[str, Any]) -> None:
        """Keep ``checkpoints/best``: the highest eval success rate so far (ties: the higher return); with a
        curriculum, a later stage beats any earlier one (its evaluation is harder)."""
        stage = self.curriculum.stage if self.curriculum is not None else 0
        score = (stage, report["success_rate"], report["episode_return_mean"])
        best = self.best_eval
        if best is None or score > (best.get("stage", 0), best["success_rate"], best["return"]):
            self.best_eval = {"success_rate": score[1], "return": score[2], "global_step": self.global_step}
            if self.curriculum is not None:
                self.best_eval["stage"] = stage
            self.save(name="best")

    def watch(self, metrics: Dict[str, float]) -> None:
        """Say once when exploration collapses or an update moves the policy too far."""
        watch = self.cfg.watch
        if "losses/policy" not in metrics:  # a skipped update has nothing to watch
            return
        checks = {
            "action_std_collapse": (metrics["policy/action_std"] < watch.min_action_std,
                                    f"action std {metrics['policy/action_std']:.4f} < {watch.min_action_std}"),
            "entropy_collapse": (watch.min_entropy is not None and metrics["losses/entropy"] < watch.min_entropy,
                                 f"policy entropy {metrics['losses/entropy']:.3f} < {watch.min_entropy}"),
            "approx_kl_explosion": (metrics["losses/approx_kl"] > watch.max_approx_kl,
                                    f"approx KL {metrics['losses/approx_kl']:.3f} > {watch.max_approx_kl}"),
        }
        for kind, (fired, detail) in checks.items():
            if fired and kind not in self.alerted:
                self.alerted.add(kind)
                self.logger.message(f"WARNING at step {self.global_step}: {kind.replace('_', ' ')}: {detail} "
                                    "(see README, 'When learning stalls')")
                self.logger.writer.add_text("alerts", f"step {self.global_step}: {kind}: {detail}",
                                            self.global_step)
                self.logger.scalars({f"alerts/{kind}": 1.0}, self.global_step)

    def log_hparams(self, report: Dict[str, Any]) -> None:
        flat = {}
        for group in ("env", "backbone", "policy", "critic", "algo"):
            for key, value in OmegaConf.to_container(self.cfg[group], resolve=True).items():
                if isinstance(value, (int, float, str, bool)):
                    flat[f"{group}.{key}"] = value
        flat.update(seed=self.cfg.seed, num_envs=self.num_envs, total_env_steps=self.cfg.total_env_steps)
        self.logger.writer.add_hparams(flat, {"hparam/success_rate": report["success_rate"],
                                              "hparam/episode_length": report["episode_length_mean"],
                                              "hparam/episode_return": report["episode_return_mean"]},
                                       run_name="hparams", global_step=self.global_step)

    def close(self) -> None:
        self.logger.close()
        self.rollouts.close()

    # -------------------------------------------------------------------------------------- checkpoints
    def save(self, name: Optional[str] = None) -> Path:
        """A checkpoint ``update_<N>`` (or ``name``, e.g. "best", which leaves ``latest`` alone).
        Never with non-finite weights: the previous checkpoint stays the latest instead."""
        self.logger.writer.flush()  # every scalar up to this step is on disk before the checkpoint says so
        weights = self.model.trainable_state_dict()
        broken = [key for key, value in weights.items() if value.is_floating_point() and
                  not bool(torch.isfinite(value).all())]
        if broken:
            raise TrainingDivergedError(f"weights {broken[:5]} hold NaN/inf; no checkpoint written, the last one "
                                        f"in {self.checkpoint_root} stands")
        snapshots = self.rollouts.snapshots()
        # The observation the next rollout starts from: arrays as tensors, text (instructions) in the JSON state.
        next_obs = self.rollouts.next_obs
        rollout_tensors = {f"next_obs/{k}": torch.as_tensor(v) for k, v in next_obs.items()
                           if isinstance(v, np.ndarray) and v.dtype.kind not in "OUS"}
        rollout_text = {k: [str(x) for x in v] for k, v in next_obs.items()
                        if not (isinstance(v, np.ndarray) and v.dtype.kind not in "OUS")}
        trainer_state = {
            "optimizer": self.ppo.optimizer.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
            "rng": rng_tensors(),
            "rollout": rollout_tensors,
            "episode_returns": torch.as_tensor(self.episodes.returns),
            "episode_lengths": torch.as_tensor(self.episodes.lengths),
        }
        if self.ppo.reference is not None:
            trainer_state["init_policy"] = self.ppo.reference.trainable_state_dict()
        state = {
            "algo": "ppo",
            "freeze_state_norm": self.freeze_state_norm,
            "global_step": self.global_step,
            "update_index": self.update_index,
            "num_envs": self.num_envs,
            "backbone": self.model.backbone.identity(),
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "rng": rng_json(),
            "env_snapshots": list(snapshots),
            "next_obs_text": rollout_text,
            "best_eval": self.best_eval,
        }
        if self.curriculum is not None:
            state["curriculum"] = self.curriculum.state_dict()
        return ckpt.save_checkpoint(
            self.checkpoint_root, name or f"update_{self.update_index:06d}",
            weights=weights, trainer_state=trainer_state, state=state,
            config_yaml=OmegaConf.to_yaml(self.cfg), keep=self.cfg.checkpoint.keep, update_latest=name is None,
        )

    def _restore(self, loaded: Dict[str, Any]) -> bool:
        """Load weights, optimizer, normalizers, counters, RNGs and (when possible) exact env states; True when
        the env states came back exactly."""
        state, trainer_state = loaded["state"], loaded["trainer"]
        if state.get("algo", "ppo") != "ppo":
            raise ckpt.CheckpointError(f"checkpoint {loaded['path']} was written by algo={state['algo']}: start PPO "
                                       f"from it with init_from={loaded['path']}, or continue that run with "
                                       f"`{resume_command(ckpt.run_directory(loaded['path']))}`")
        try:
            ckpt.check_compatible(state, backbone_identity=self.model.backbone.identity(),
                                  state_dim=self.state_dim, action_dim=self.action_dim, path=loaded["path"])
        except ckpt.CheckpointError as error:
            raise ckpt.CheckpointError(f"{error} The run was launched with other settings: continue it with "
                                       f"`{resume_command(self.run_dir)}`") from None
        self.model.load_trainable_state_dict(loaded["weights"], str(loaded["path"]))
        if self.ppo.reference is not None:
            # A run that had no KL term until now keeps the policy it resumes from as its reference.
            initial_policy = trainer_state.get("init_policy", loaded["weights"])
            self.ppo.reference.load_trainable_state_dict(initial_policy, str(loaded["path"]))
        self.ppo.optimizer.load_state_dict(trainer_state["optimizer"])
        self.global_step, self.update_index = state["global_step"], state["update_index"]
        self.freeze_state_norm = state.get("freeze_state_norm", False)
        self.best_eval = state.get("best_eval")
        snapshots = state.get("env_snapshots") or []
        exact = (self.rollouts.restores_snapshots and state.get("num_envs") == self.num_envs
                 and len(snapshots) == self.num_envs and all(snapshots))
        if exact:
            self.reward_scaler.load_state_dict(trainer_state["reward_scaler"])
            next_obs = {k[len("next_obs/"):]: v.cpu().numpy() for k, v in trainer_state["rollout"].items()}
            next_obs.update({k: tuple(v) for k, v in state.get("next_obs_text", {}).items()})
            self.rollouts.restore(snapshots, next_obs)
            self.episodes.returns[:] = trainer_state["episode_returns"].numpy()
            self.episodes.lengths[:] = trainer_state["episode_lengths"].numpy()
        else:
            # Envs whose simulator state cannot be captured (or a different num_envs) start fresh episodes;
            # the partial episodes at checkpoint time are dropped.
            self.reward_scaler.load_state_dict(trainer_state["reward_scaler"])
            self.reward_scaler.discounted_return.zero_()
            self.rollouts.reset(seed=self.cfg.seed + self.global_step)
        restore_rng(trainer_state["rng"], state["rng"])
        return exact
