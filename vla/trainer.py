"""The PPO training loop: collect a rollout from vector envs, compute GAE, update, log, checkpoint."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import OmegaConf

from envs import make_vector_env
from vla import checkpoint as ckpt
from vla.actor_critic import ActorCritic
from vla.logger import RunLogger
from vla.normalize import RewardScaler
from vla.ppo import PPO, RolloutStorage, compute_gae
from vla.seeding import restore_rng, rng_json, rng_tensors, seed_everything


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def stack_obs(observations: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """A list of single-env observation dicts -> one batched dict."""
    return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}


class EpisodeTracker:
    """Return, length and success of finished episodes (success = ``info["success"]`` on the final step)."""

    def __init__(self, num_envs: int, window: int = 100):
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, dtype=np.int64)
        self.finished: List[Dict[str, float]] = []  # since the last drain
        self.recent = deque(maxlen=window)  # for the progress bar

    def step(self, rewards: np.ndarray, done: np.ndarray, final_success: np.ndarray) -> None:
        self.returns += rewards
        self.lengths += 1
        for i in np.flatnonzero(done):
            episode = {"return": float(self.returns[i]), "length": int(self.lengths[i]),
                       "success": float(final_success[i])}
            self.finished.append(episode)
            self.recent.append(episode)
            self.returns[i], self.lengths[i] = 0.0, 0

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


class Trainer:
    def __init__(self, cfg, run_dir: Path):
        self.cfg = cfg
        self.algo = cfg.algo
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        torch.use_deterministic_algorithms(cfg.deterministic_torch)
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.num_envs = cfg.num_envs
        self.batch_size = self.algo.num_steps * self.num_envs
        self.num_updates = max(1, cfg.total_env_steps // self.batch_size)

        resume_from = ckpt.load_checkpoint(ckpt.resolve_checkpoint(cfg.resume)) if cfg.resume else None
        # On resume, everything (checkpoints, tensorboard) continues in the original run directory.
        self.run_dir = resume_from["path"].parent.parent if resume_from else run_dir
        self.checkpoint_root = self.run_dir / "checkpoints"

        self.envs = make_vector_env(cfg.env, self.num_envs)
        obs_space, action_space = self.envs.single_observation_space, self.envs.single_action_space
        self.model = ActorCritic.from_config(cfg, obs_space, action_space).to(self.device)
        self.state_dim = int(obs_space["state"].shape[0])
        self.action_dim = int(np.prod(action_space.shape))
        self.reward_scaler = RewardScaler(self.num_envs, self.algo.gamma, self.algo.clip_norm).to(self.device)
        self.ppo = PPO(self.algo, self.model)
        self.storage = RolloutStorage(self.algo.num_steps, self.num_envs, self.device)
        self.episodes = EpisodeTracker(self.num_envs)
        self.update_index = 0
        self.global_step = 0
        self.history: List[Dict[str, float]] = []

        exact_resume = True
        if resume_from is not None:
            self.next_obs, exact_resume = self._restore(resume_from)
        else:
            self.next_obs, _ = self.envs.reset(seed=cfg.seed)
        self.logger = RunLogger(self.run_dir, self.num_updates * self.batch_size, self.global_step, cfg.progress)
        if resume_from is not None:
            self.logger.message(f"resumed from {resume_from['path']} at env step {self.global_step}")
            if not exact_resume:
                self.logger.message("env states could not be restored exactly (different num_envs or an env "
                                    "without snapshot support): episodes in progress were dropped")
        else:
            self.logger.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```", 0)

    # ------------------------------------------------------------------------------------------ rollout
    def collect_rollout(self) -> Dict[str, float]:
        model, algo, storage = self.model, self.algo, self.storage
        storage.reset()
        env_time = model_time = 0.0
        for _ in range(algo.num_steps):
            t0 = time.perf_counter()
            obs = model.to_tensors(self.next_obs, update_stats=algo.norm_state)
            out = model.act(obs)
            actions = out.action.cpu().numpy()
            t1 = time.perf_counter()
            self.next_obs, reward, terminated, truncated, info = self.envs.step(actions)
            t2 = time.perf_counter()
            done = terminated | truncated
            reward_t = torch.as_tensor(reward, dtype=torch.float32, device=self.device)
            done_t = torch.as_tensor(done, device=self.device)
            if algo.norm_reward:
                reward_t = self.reward_scaler(reward_t, done_t)
            final_values = torch.zeros(self.num_envs, device=self.device)
            cut = np.flatnonzero(truncated & ~terminated)
            if len(cut):
                # The time limit cut these episodes: their return continues past the cut, so bootstrap from
                # the value of the observation the episode ended in (not the reset observation we now hold).
                final_obs = model.to_tensors(stack_obs([info["final_obs"][i] for i in cut]))
                final_values[cut] = model.value(final_obs)
            storage.add(**{f"in/{k}": v for k, v in out.update_inputs.items()},
                        action=out.action, log_prob=out.log_prob, value=out.value, reward=reward_t,
                        terminated=torch.as_tensor(terminated, device=self.device),
                        truncated=torch.as_tensor(truncated, device=self.device), final_value=final_values)
            final_success = np.zeros(self.num_envs, dtype=bool)
            if done.any():
                final_success = np.asarray(info["final_info"].get("success", final_success), dtype=bool)
            self.episodes.step(reward, done, final_success)
            self.global_step += self.num_envs
            model_time += t1 - t0 + time.perf_counter() - t2
            env_time += t2 - t1
        return {"perf/env_seconds": env_time, "perf/inference_seconds": model_time}

    # ------------------------------------------------------------------------------------------- update
    def train_one_update(self) -> Dict[str, float]:
        start = time.perf_counter()
        self.ppo.set_progress(self.update_index / self.num_updates)
        timings = self.collect_rollout()
        t_update = time.perf_counter()
        data = self.storage.data
        with torch.no_grad():
            next_value = self.model.value(self.model.to_tensors(self.next_obs))
        advantages, returns = compute_gae(data["reward"], data["value"], data["terminated"], data["truncated"],
                                          data["final_value"], next_value, self.algo.gamma, self.algo.gae_lambda)
        critic_only = self.update_index < self.algo.critic_warmup_updates
        stats = self.ppo.update(self.storage, advantages, returns, critic_only=critic_only)
        self.update_index += 1
        now = time.perf_counter()
        metrics = {
            "losses/policy": stats.policy_loss, "losses/value": stats.value_loss,
            "losses/entropy": stats.entropy, "losses/approx_kl": stats.approx_kl,
            "losses/clip_fraction": stats.clip_fraction, "losses/explained_variance": stats.explained_variance,
            "losses/grad_norm": stats.grad_norm, "losses/update_epochs": stats.epochs,
            "losses/skipped_steps": float(stats.skipped_steps),
            "policy/action_std": stats.action_std,
            "charts/learning_rate": self.ppo.optimizer.param_groups[0]["lr"],
            "charts/value_learning_rate": self.ppo.optimizer.param_groups[1]["lr"],
            "perf/sps": self.batch_size / (now - start),
            "perf/update_seconds": now - t_update,
            **timings,
            **self.episodes.drain(),
        }
        return metrics

    def train(self) -> List[Dict[str, float]]:
        """Run until ``total_env_steps``; returns the per-update metrics (also written to tensorboard)."""
        try:
            while self.update_index < self.num_updates:
                metrics = self.train_one_update()
                metrics["charts/update"] = float(self.update_index)
                self.history.append(metrics)
                self.logger.scalars(metrics, self.global_step)
                self.logger.progress(self.batch_size, {"sps": f"{metrics['perf/sps']:.0f}",
                                                       **self.episodes.summary()})
                if self.update_index % self.cfg.checkpoint.every_updates == 0 or \
                        self.update_index == self.num_updates:
                    self.save()
        except KeyboardInterrupt:
            self.logger.message("interrupted: writing a final checkpoint")
            self.save()
            raise
        finally:
            self.close()
        return self.history

    def close(self) -> None:
        self.logger.close()
        self.envs.close()

    # -------------------------------------------------------------------------------------- checkpoints
    def save(self) -> Path:
        snapshots = self.envs.call("get_snapshot")
        rollout_tensors = {f"next_obs/{k}": torch.as_tensor(v) for k, v in self.next_obs.items()
                           if isinstance(v, np.ndarray)}
        trainer_state = {
            "optimizer": self.ppo.optimizer.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
            "rng": rng_tensors(),
            "rollout": rollout_tensors,
            "episode_returns": torch.as_tensor(self.episodes.returns),
            "episode_lengths": torch.as_tensor(self.episodes.lengths),
        }
        state = {
            "global_step": self.global_step,
            "update_index": self.update_index,
            "num_envs": self.num_envs,
            "backbone": self.model.backbone.identity(),
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "rng": rng_json(),
            "env_snapshots": list(snapshots),
        }
        return ckpt.save_checkpoint(
            self.checkpoint_root, f"update_{self.update_index:06d}",
            weights=self.model.trainable_state_dict(), trainer_state=trainer_state, state=state,
            config_yaml=OmegaConf.to_yaml(self.cfg), keep=self.cfg.checkpoint.keep,
        )

    def _restore(self, loaded: Dict[str, Any]) -> Tuple[Dict[str, np.ndarray], bool]:
        """Load weights, optimizer, normalizers, counters, RNGs and (when possible) exact env states."""
        state, trainer_state = loaded["state"], loaded["trainer"]
        ckpt.check_compatible(state, backbone_identity=self.model.backbone.identity(), state_dim=self.state_dim,
                              action_dim=self.action_dim, path=loaded["path"])
        self.model.load_trainable_state_dict(loaded["weights"], str(loaded["path"]))
        self.ppo.optimizer.load_state_dict(trainer_state["optimizer"])
        self.global_step, self.update_index = state["global_step"], state["update_index"]
        snapshots = state.get("env_snapshots") or []
        exact = state.get("num_envs") == self.num_envs and len(snapshots) == self.num_envs and all(snapshots)
        if exact:
            self.reward_scaler.load_state_dict(trainer_state["reward_scaler"])
            self.envs.reset(seed=self.cfg.seed)
            self.envs.call("restore_snapshot", snapshots)
            next_obs = {k[len("next_obs/"):]: v.cpu().numpy() for k, v in trainer_state["rollout"].items()}
            self.episodes.returns[:] = trainer_state["episode_returns"].numpy()
            self.episodes.lengths[:] = trainer_state["episode_lengths"].numpy()
        else:
            # Envs whose simulator state cannot be captured (or a different num_envs) start fresh episodes;
            # the partial episodes at checkpoint time are dropped.
            self.reward_scaler.load_state_dict(trainer_state["reward_scaler"])
            self.reward_scaler.discounted_return.zero_()
            next_obs, _ = self.envs.reset(seed=self.cfg.seed + self.global_step)
        restore_rng(trainer_state["rng"], state["rng"])
        return next_obs, exact
