"""Behaviour cloning: ``vla-train algo=bc dataset=PATH``.

Trains the action expert (and whatever part of the backbone trains: projection, LoRA adapters) by maximum
likelihood of the demonstrations' actions, with the same backbone, expert and critic configs and the same
``ActorCritic`` a PPO run builds, and writes checkpoints in the PPO trainer's format, so ``vla-eval`` evaluates
them and ``vla-train init_from=<checkpoint>`` starts PPO from them. The critic is not trained here (demos say
nothing about values under the cloned policy); PPO's ``algo.critic_warmup_updates`` fits it before the actor
moves.

When nothing in the backbone's frozen stage trains, its features are computed once for the whole dataset
(``ActorCritic.act`` caches them exactly as a PPO rollout does) and every epoch reads them.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from gymnasium import spaces
from omegaconf import OmegaConf
from torch import nn

from envs import make_env
from vla import checkpoint as ckpt
from vla.actor_critic import ActorCritic
from vla.backbones.towers import IMAGE_TOWER_WEIGHTS
from vla.demos import DatasetError, DemoDataset, merge_datasets, read_dataset
from vla.errors import ConfigError, TrainingDivergedError
from vla.evaluate import evaluate_policy, report_scalars, split_env_config
from vla.logger import RunLogger
from vla.seeding import restore_rng, rng_json, rng_tensors, seed_everything
from vla.trainer import load_initial_weights, resolve_device, resume_command

# Samples per forward pass when the dataset's features are computed or its validation loss is measured.
INFERENCE_BATCH = 256


def check_dataset_fits(dataset: DemoDataset, observation_space: spaces.Dict, action_dim: int, path) -> None:
    """Refuse demos whose actions or observations do not fit the run's env, naming every difference."""
    demo = next(iter(dataset.demos.values()))
    problems = []
    if demo.actions.shape[1] != action_dim:
        problems.append(f"action size {demo.actions.shape[1]} vs {action_dim}")
    for key, space in observation_space.spaces.items():
        if key == "instruction":
            if demo.instruction is None:
                problems.append("no instruction attribute on the demos, but the env gives one")
        elif key not in demo.obs:
            problems.append(f"observation {key!r} missing (the dataset has {sorted(demo.obs)})")
        elif demo.obs[key].shape[1:] != space.shape:
            problems.append(f"observation {key!r} of shape {demo.obs[key].shape[1:]} vs {space.shape}")
    if problems:
        recorded = {k: v for k, v in dataset.env_args.items() if k in ("kind", "id", "task", "cameras", "use_camera")}
        raise DatasetError(
            f"dataset {path} (recorded on env {recorded}) does not fit this run's env: " + "; ".join(problems)
            + ". Train with the env config the demos were recorded on, or record demos on this one with "
            "vla-demos env=<the same env>")


def demo_samples(dataset: DemoDataset, names: List[str], keys: List[str], chunk: int) -> Dict[str, Any]:
    """Every step of the named demos as one batch: observations (``instruction``: one text per step), the
    action targets and their mask. With action chunks of ``chunk`` steps the target of step t is the flattened
    actions t .. t + chunk - 1; past the demo's end the target is padded and masked out. An unlabelled demo's
    (scene views, ``vla-demos unlabelled=true``) targets are masked out whole: only the auxiliary loss sees it."""
    observations: Dict[str, list] = {key: [] for key in keys}
    targets, masks = [], []
    for name in names:
        demo = dataset.demos[name]
        n, action_dim = demo.actions.shape
        for key in keys:
            if key == "instruction":
                observations[key] += [demo.instruction] * n
            else:
                observations[key].append(demo.obs[key])
        padded = np.concatenate([demo.actions, np.zeros((chunk - 1, action_dim), demo.actions.dtype)])
        valid = np.concatenate([np.full((n, action_dim), float(demo.labelled)), np.zeros((chunk - 1, action_dim))])
        windows = np.arange(n)[:, None] + np.arange(chunk)[None, :]  # (n, chunk) step indices
        targets.append(padded[windows].reshape(n, chunk * action_dim))
        masks.append(valid[windows].reshape(n, chunk * action_dim))
    obs = {key: values if key == "instruction" else np.concatenate(values) for key, values in observations.items()}
    return {"obs": obs, "actions": np.concatenate(targets).astype(np.float32),
            "mask": np.concatenate(masks).astype(np.float32)}


def masked_nll(dist, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-log p(a | s) per sample over the valid action dimensions (a chunk running past its demo's end has
    padded ones). Reads the per-dimension densities of the expert's factorized distribution."""
    return -(dist.base_dist.log_prob(targets) * mask).sum(-1)


def is_labelled(mask: torch.Tensor) -> torch.Tensor:
    """Which samples have an action target: all but scene views (a chunk running past its demo's end still has
    its first steps)."""
    return mask.sum(-1) > 0


def labelled_samples(mask: torch.Tensor) -> torch.Tensor:
    """How many samples of a batch have an action target."""
    return is_labelled(mask).sum()


class BCTrainer:
    """Minibatch Adam on the demos' negative log-likelihood; logs, validates, evaluates in simulation and
    checkpoints every ``steps_per_update`` gradient steps (one "update"), like the PPO trainer per update."""

    def __init__(self, cfg, run_dir: Path):
        self.cfg = cfg
        self.algo = cfg.algo
        if cfg.dataset is None:
            raise ConfigError("algo=bc needs dataset=PATH: demonstrations recorded with vla-demos (or any "
                              "robomimic-style HDF5 file with this env's observation keys)")
        if cfg.curriculum.enabled:
            raise ConfigError("curriculum.enabled=true applies to PPO runs; algo=bc learns from a fixed dataset. "
                              "Set curriculum.enabled=false")
        if cfg.eval.heldout:
            split_env_config(cfg.env, "heldout")  # an env without splits fails now, not at the first evaluation
        torch.set_num_threads(cfg.torch_threads)
        torch.use_deterministic_algorithms(cfg.deterministic_torch)
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        resume_from = ckpt.load_checkpoint(cfg.resume) if cfg.resume else None
        # On resume, everything (checkpoints, tensorboard) continues in the original run directory.
        self.run_dir = run_dir = ckpt.run_directory(resume_from["path"]) if resume_from else run_dir
        self.checkpoint_root = run_dir / "checkpoints"
        paths = [cfg.dataset] if isinstance(cfg.dataset, str) else list(cfg.dataset)
        if not paths:
            raise ConfigError("dataset=[] names no demonstrations; give a path or a list of paths")
        self.dataset_paths = [Path(str(path)).expanduser().resolve() for path in paths]
        if resume_from is not None:
            self.check_resumable(resume_from)

        probe = make_env(cfg.env)
        obs_space, action_space = probe.observation_space, probe.action_space
        probe.close()
        self.state_dim = int(obs_space["state"].shape[0])
        self.action_dim = int(np.prod(action_space.shape))
        datasets, mismatches = [], []
        for path in self.dataset_paths:
            datasets.append(read_dataset(path))
            check_dataset_fits(datasets[-1], obs_space, self.action_dim, path)
            recorded_task = {key: datasets[-1].env_args[key] for key in ("kind", "id", "task", "split")
                             if key in datasets[-1].env_args}
            run_task = {key: cfg.env.get(key) for key in recorded_task}
            if recorded_task != run_task:
                mismatches.append(f"the demos in {path} were recorded on {recorded_task}, this run trains on "
                                  f"{run_task}")
        dataset = merge_datasets(datasets)
        sources = ", ".join(str(path) for path in self.dataset_paths)
        if not dataset.train:
            raise DatasetError(f"dataset {sources} lists no training demos under mask/train")
        num_unlabelled = sum(not dataset.demos[name].labelled for name in dataset.train)
        if num_unlabelled == len(dataset.train):
            raise DatasetError(f"dataset {sources} holds only scene views (vla-demos unlabelled=true), no action "
                               "labels to clone: add demonstrations, dataset=[<demos.hdf5>,<scenes.hdf5>]")
        if num_unlabelled and not (self.algo.privileged_aux_coef > 0 and cfg.env.get("privileged_obs")):
            raise ConfigError(f"{num_unlabelled} of the training demos in {sources} are scene views without action "
                              "labels, which only the auxiliary privileged-state loss learns from: set "
                              "algo.privileged_aux_coef > 0 and env.privileged_obs=true, or leave them out")
        self.model = ActorCritic.from_config(cfg, obs_space, action_space).to(self.device)
        if resume_from is not None:  # the weights and the normalizer statistics the interrupted run had
            ckpt.check_compatible(resume_from["state"], backbone_identity=self.model.backbone.identity(),
                                  state_dim=self.state_dim, action_dim=self.action_dim, path=resume_from["path"])
            self.model.load_trainable_state_dict(resume_from["weights"], str(resume_from["path"]))
        elif cfg.init_from:
            load_initial_weights(self.model, cfg.init_from, self.state_dim, self.action_dim)
        self.optimizer = torch.optim.Adam(self.parameter_groups(), eps=self.algo.adam_eps,
                                          weight_decay=self.algo.weight_decay)

        keys = [key for key in obs_space.spaces]
        chunk = self.model.actions_per_decision
        train = demo_samples(dataset, dataset.train, keys, chunk)
        valid = demo_samples(dataset, dataset.valid, keys, chunk) if dataset.valid else None
        num_train_demos, num_valid_demos = len(dataset.train) - num_unlabelled, len(dataset.valid)
        del dataset, datasets  # the samples hold copies of every frame: free the demos' before caching features
        for split in (train, valid):
            if split is not None and not all(np.isfinite(v).all() for k, v in split["obs"].items()
                                             if k != "instruction" and v.dtype.kind == "f"):
                raise DatasetError(f"dataset {sources} holds NaN/inf observations")
        # The state normalizer comes from the training demos (unless init_from or resume= brought one along).
        self.train_data = self.model_inputs(train, fit_normalizer=not (cfg.init_from or resume_from))
        self.valid_data = self.model_inputs(valid, fit_normalizer=False) if valid is not None else None
        self.num_samples = len(self.train_data["actions"])
        self.batch_size = min(self.algo.batch_size, self.num_samples)
        self.pools = self.sample_pools(self.train_data["mask"], num_unlabelled > 0)
        steps_per_epoch = math.ceil(self.num_samples / self.batch_size)
        total_steps = self.algo.epochs * steps_per_epoch if self.algo.epochs is not None \
            else self.algo.gradient_steps
        self.num_updates = max(1, math.ceil(total_steps / self.algo.steps_per_update))
        self.total_steps = self.num_updates * self.algo.steps_per_update
        self.steps_per_epoch = steps_per_epoch

        self.global_step = 0  # gradient steps: the x axis of this run's curves
        self.update_index = 0
        self.best_eval: Optional[Dict[str, float]] = None
        self.final_report: Optional[Dict[str, Any]] = None
        self.stop_signal: Optional[int] = None
        self.history: List[Dict[str, float]] = []
        self._orders = [torch.empty(0, dtype=torch.long) for _ in self.pools]
        if resume_from is not None:
            self._restore(resume_from)
        self.logger = RunLogger(run_dir, self.total_steps, self.global_step, cfg.progress)
        self.logger.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```", 0)
        self.logger.message(
            f"behaviour cloning on {num_train_demos} demos"
            + (f" and {num_unlabelled} scene views for the auxiliary loss" if num_unlabelled else "")
            + f" ({self.num_samples} steps; {num_valid_demos} more held out for validation) from {sources}: "
            f"{self.total_steps} gradient steps of {self.batch_size} samples")
        for mismatch in mismatches:
            self.logger.message(f"WARNING: {mismatch} (the observations fit, so training goes ahead)")
        if resume_from is not None:
            self.logger.message(f"resumed from {resume_from['path']} at gradient step {self.global_step}")

    def check_resumable(self, loaded: Dict[str, Any]) -> None:
        """``resume=``: refuse a PPO checkpoint, or a BC run on other demos (its sample order and normalizer
        statistics belong to those)."""
        state = loaded["state"]  # self.run_dir is already the checkpoint's run
        if state.get("algo", "ppo") != "bc":
            raise ckpt.CheckpointError(f"checkpoint {loaded['path']} was written by algo={state.get('algo', 'ppo')}; "
                                       f"algo=bc resumes BC runs only: continue that run with "
                                       f"`{resume_command(self.run_dir)}`")
        recorded = state["dataset"] if isinstance(state["dataset"], list) else [state["dataset"]]
        current = [str(path) for path in self.dataset_paths]
        if recorded != current:
            raise ConfigError(f"checkpoint {loaded['path']} is from a BC run on dataset={recorded}, not {current}: "
                              f"continue it with `{resume_command(self.run_dir)}`, or start a new run on these "
                              f"demos from it with init_from={loaded['path']}")

    def _restore(self, loaded: Dict[str, Any]) -> None:
        """Optimizer, counters, the minibatch order and every RNG of the interrupted run: the resumed run takes
        the same gradient steps it would have taken."""
        state, trainer_state = loaded["state"], loaded["trainer"]
        if state.get("num_samples", self.num_samples) != self.num_samples:
            raise DatasetError(f"the demos changed since checkpoint {loaded['path']} was written "
                               f"({state['num_samples']} training steps then, {self.num_samples} now); start a new "
                               f"run from it with init_from={loaded['path']}")
        saved_groups = len(trainer_state["optimizer"]["param_groups"])
        if saved_groups != len(self.optimizer.param_groups):
            raise ConfigError(f"checkpoint {loaded['path']} was written with {saved_groups} learning rate group(s), "
                              f"this run has {len(self.optimizer.param_groups)}: algo.image_tower_learning_rate was "
                              "set in one and not the other; resume with the setting the run started with")
        self.optimizer.load_state_dict(trainer_state["optimizer"])
        for group in self.optimizer.param_groups:  # checkpoints from before the groups kept their starting rate
            group.setdefault("initial_lr", self.algo.learning_rate)
        self.global_step, self.update_index = state["global_step"], state["update_index"]
        self.best_eval = state.get("best_eval")
        orders = trainer_state.get("sample_orders")
        if orders is not None and len(orders) == len(self.pools):
            self._orders = [order.cpu() for order in orders]
        restore_rng(trainer_state["rng"], state["rng"])

    # ------------------------------------------------------------------------------------------- data
    @torch.no_grad()
    def model_inputs(self, samples: Dict[str, Any], fit_normalizer: bool) -> Dict[str, Any]:
        """Observations -> the update inputs a PPO rollout stores for them (cached frozen features, or the
        observations themselves when the frozen stage trains), action targets and masks, on the device."""
        obs = self.model.to_tensors(samples["obs"], update_stats=fit_normalizer and self.algo.norm_state)
        if self.model.backbone.is_trainable:  # every update re-runs the whole backbone on the observations
            inputs = obs
        else:
            count = len(samples["actions"])
            pieces = [self.model.act({k: v[i:i + INFERENCE_BATCH] for k, v in obs.items()}).update_inputs
                      for i in range(0, count, INFERENCE_BATCH)]
            inputs = {key: torch.cat([piece[key] for piece in pieces]) for key in pieces[0]}
        return {"inputs": inputs, "actions": torch.as_tensor(samples["actions"], device=self.device),
                "mask": torch.as_tensor(samples["mask"], device=self.device)}

    def sample_pools(self, mask: torch.Tensor, has_scene_views: bool) -> List[Tuple[torch.Tensor, int]]:
        """(sample indices, samples per minibatch) of each pool a minibatch draws from: all samples, or with
        ``algo.labelled_fraction`` and scene views in the data, the labelled samples and the scene views apart."""
        fraction = self.algo.get("labelled_fraction")
        if fraction is not None and not 0.0 < fraction < 1.0:
            raise ConfigError(f"algo.labelled_fraction={fraction}: the share of each minibatch drawn from the "
                              "labelled demos must lie strictly between 0 and 1 (null: uniform over all samples)")
        if fraction is None or not has_scene_views:
            return [(torch.arange(self.num_samples), self.batch_size)]
        labelled = is_labelled(mask).cpu()
        num_labelled = max(1, min(self.batch_size - 1, round(fraction * self.batch_size)))
        return [(torch.nonzero(labelled).squeeze(1), num_labelled),
                (torch.nonzero(~labelled).squeeze(1), self.batch_size - num_labelled)]

    def next_batch(self) -> torch.Tensor:
        """Indices of the next minibatch: from each pool, consecutive slices of a fresh permutation of the pool
        every time it runs out (every epoch, with one pool)."""
        batch = []
        for i, (pool, count) in enumerate(self.pools):
            if len(self._orders[i]) < count:
                self._orders[i] = pool[torch.randperm(len(pool))]
            batch.append(self._orders[i][:count])
            self._orders[i] = self._orders[i][count:]
        return torch.cat(batch).to(self.device)

    def losses(self, data: Dict[str, Any], idx: torch.Tensor):
        """(mean NLL, mean squared error of the mean action, the distribution) on samples ``idx``; the auxiliary
        privileged-state loss, when on, is left in ``model.aux_loss``."""
        inputs = {key: value[idx] for key, value in data["inputs"].items()}
        targets, mask = data["actions"][idx], data["mask"][idx]
        _, _, _, dist = self.model.evaluate(inputs, targets)
        # Means over the labelled samples (scene views have none).
        nll = masked_nll(dist, targets, mask).sum() / labelled_samples(mask).clamp(min=1)
        mse = ((dist.mean - targets).pow(2) * mask).sum() / mask.sum().clamp(min=1)
        return nll, mse, dist

    @torch.no_grad()
    def validation(self) -> Dict[str, float]:
        """Validation losses: the NLL and action error over the held-out demos' labelled samples, the auxiliary
        loss over all held-out frames (scene views included)."""
        count = len(self.valid_data["actions"])
        nll = mse = aux = 0.0
        for start in range(0, count, INFERENCE_BATCH):
            idx = torch.arange(start, min(start + INFERENCE_BATCH, count), device=self.device)
            batch_nll, batch_mse, _ = self.losses(self.valid_data, idx)
            mask = self.valid_data["mask"][idx]
            nll += float(batch_nll) * int(labelled_samples(mask))
            mse += float(batch_mse) * float(mask.sum())
            if self.model.aux_loss is not None:
                aux += float(self.model.aux_loss) * len(idx)
        mask = self.valid_data["mask"]
        metrics = {}
        if mask.sum() > 0:  # held-out demos with labels, not only scene views
            metrics = {"losses/bc_valid_nll": nll / int(labelled_samples(mask)),
                       "losses/bc_valid_mse": mse / float(mask.sum())}
        if self.model.aux_loss is not None:
            metrics["losses/bc_valid_privileged_aux"] = aux / count
        return metrics

    def parameter_groups(self) -> List[Dict[str, Any]]:
        """The optimizer's groups: everything the actor trains at ``algo.learning_rate``, except a fine-tuned
        image tower at ``algo.image_tower_learning_rate`` when that is set."""
        lr, tower_lr = self.algo.learning_rate, self.algo.image_tower_learning_rate
        params = self.model.actor_parameters()
        if tower_lr is None:
            return [{"params": params, "lr": lr, "initial_lr": lr}]
        tower = {id(p) for name, p in self.model.named_parameters()
                 if name.startswith(IMAGE_TOWER_WEIGHTS) and p.requires_grad}
        if not tower:
            raise ConfigError(f"algo.image_tower_learning_rate={tower_lr} is set, but nothing trains an image tower "
                              "here: set backbone.train_image_tower=true (backbone=towers, a camera env), or drop it")
        return [{"params": [p for p in params if id(p) not in tower], "lr": lr, "initial_lr": lr},
                {"params": [p for p in params if id(p) in tower], "lr": tower_lr, "initial_lr": tower_lr}]

    # ----------------------------------------------------------------------------------------- update
    def train_one_update(self) -> Dict[str, float]:
        start = time.perf_counter()
        sums = {"nll": 0.0, "mse": 0.0, "grad": 0.0, "std": 0.0}
        steps = skipped = 0
        for _ in range(self.algo.steps_per_update):
            if self.algo.anneal_lr:
                for group in self.optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * (1.0 - self.global_step / self.total_steps)
            nll, mse, dist = self.losses(self.train_data, self.next_batch())
            aux = self.model.aux_loss
            loss = nll if aux is None else nll + self.algo.privileged_aux_coef * aux
            self.global_step += 1
            self.optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                skipped += 1
                continue
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(self.model.actor_parameters(), self.algo.max_grad_norm)
            if not torch.isfinite(grad_norm):
                skipped += 1
                continue
            self.optimizer.step()
            steps += 1
            sums["nll"] += nll.item()
            sums["mse"] += mse.item()
            sums["grad"] += float(grad_norm)
            sums["std"] += float(dist.stddev.detach().mean())
            if aux is not None:
                sums["aux"] = sums.get("aux", 0.0) + aux.item()
        self.update_index += 1
        if steps == 0:
            raise TrainingDivergedError(
                f"every minibatch of update {self.update_index} had a non-finite loss or gradient; stopping. "
                "Lower algo.learning_rate, or check the dataset's actions and observations")
        metrics = {"losses/bc_nll": sums["nll"] / steps, "losses/bc_mse": sums["mse"] / steps,
                   "losses/grad_norm": sums["grad"] / steps, "policy/action_std": sums["std"] / steps,
                   "charts/learning_rate": self.optimizer.param_groups[0]["lr"],
                   "charts/epoch": self.global_step / self.steps_per_epoch,
                   "reliability/skipped_minibatches": float(skipped)}
        if "aux" in sums:
            metrics["losses/privileged_aux"] = sums["aux"] / steps
        if self.valid_data is not None:
            metrics.update(self.validation())
        metrics["perf/gradient_steps_per_second"] = self.algo.steps_per_update / (time.perf_counter() - start)
        return metrics

    def train(self) -> List[Dict[str, float]]:
        """Run all updates, then evaluate in simulation; returns the per-update metrics (also in tensorboard)."""
        every_eval = self.cfg.eval.every_updates
        previous_handlers = {sig: signal.signal(sig, self._on_stop_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.update_index < self.num_updates and self.stop_signal is None:
                metrics = self.train_one_update()
                self.history.append(metrics)
                self.logger.scalars(metrics, self.global_step)
                self.logger.progress(self.algo.steps_per_update, {"nll": f"{metrics['losses/bc_nll']:.3f}"})
                if every_eval and (self.update_index % every_eval == 0 or self.update_index == self.num_updates):
                    self.keep_if_best(self.evaluate(f"update_{self.update_index:06d}", seed=self.cfg.eval.select_seed))
                if self.update_index % self.cfg.checkpoint.every_updates == 0 or \
                        self.update_index == self.num_updates or self.stop_signal is not None:
                    self.save()
            if self.stop_signal is not None:
                self.logger.message(f"stopped by {signal.Signals(self.stop_signal).name} at gradient step "
                                    f"{self.global_step}; resume with `{resume_command(self.run_dir)}`")
            elif self.cfg.eval.at_end and self.cfg.eval.episodes > 0:
                self.final_report = self.evaluate("final", record=self.cfg.eval.video_episodes)
                if not every_eval:  # the only candidate; with periodic evaluations the last one ranked it
                    self.keep_if_best(self.final_report)
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            self.logger.close()
        return self.history

    def _on_stop_signal(self, signum, frame) -> None:
        """First SIGINT/SIGTERM: finish the current update, checkpoint, stop. Second: stop at once."""
        if self.stop_signal is not None:
            raise KeyboardInterrupt
        self.stop_signal = signum
        self.logger.message(f"{signal.Signals(signum).name}: finishing the current update, then writing a "
                            "checkpoint (send it again to stop at once)")

    # ------------------------------------------------------------------------------- evaluation, checkpoints
    def evaluate(self, name: str, record: int = 0, seed: Optional[int] = None) -> Dict[str, Any]:
        """The cloned policy in simulation on fixed seeds (``eval.seed``, or ``seed``), logged as ``eval/*``."""
        ecfg = self.cfg.eval
        identity = {"path": str(self.checkpoint_root), "global_step": self.global_step,
                    "update": self.update_index, "backbone": self.model.backbone.identity()}
        report = evaluate_policy(
            self.model, self.cfg.env, self.run_dir / "eval" / name, episodes=ecfg.episodes,
            seed=ecfg.seed if seed is None else seed,
            num_envs=ecfg.num_envs or self.cfg.num_envs, deterministic=ecfg.deterministic, checkpoint=identity,
            config=OmegaConf.to_container(self.cfg, resolve=True), record=record, fps=ecfg.video_fps,
            writer=self.logger.writer, step=self.global_step, heldout=ecfg.heldout)
        self.logger.scalars(report_scalars(report), self.global_step)
        heldout = (f"; held-out split: success rate {report['heldout']['success_rate']:.1%}"
                   if "heldout" in report else "")
        self.logger.message(f"eval at gradient step {self.global_step}: success rate {report['success_rate']:.1%}, "
                            f"episode length {report['episode_length_mean']:.1f}{heldout}")
        return report

    def keep_if_best(self, report: Dict[str, Any]) -> None:
        """Keep ``checkpoints/best``: the highest eval success rate so far (ties: the higher return)."""
        score = (report["success_rate"], report["episode_return_mean"])
        if self.best_eval is None or score > (self.best_eval["success_rate"], self.best_eval["return"]):
            self.best_eval = {"success_rate": score[0], "return": score[1], "global_step": self.global_step}
            self.save(name="best")

    def save(self, name: Optional[str] = None) -> Path:
        """A checkpoint in the PPO trainer's format (``state.json`` says ``algo: bc``; no env state), with the
        optimizer, RNG and minibatch-order state that ``resume=`` continues from."""
        self.logger.writer.flush()
        weights = self.model.trainable_state_dict()
        broken = [key for key, value in weights.items() if value.is_floating_point() and
                  not bool(torch.isfinite(value).all())]
        if broken:
            raise TrainingDivergedError(f"weights {broken[:5]} hold NaN/inf; no checkpoint written, the last one "
                                        f"in {self.checkpoint_root} stands")
        state = {
            "algo": "bc",
            "dataset": [str(path) for path in self.dataset_paths] if len(self.dataset_paths) > 1
            else str(self.dataset_paths[0]),
            "global_step": self.global_step,
            "update_index": self.update_index,
            "num_envs": 0,
            "num_samples": self.num_samples,
            "backbone": self.model.backbone.identity(),
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "rng": rng_json(),
            "env_snapshots": [],
            "next_obs_text": {},
            "best_eval": self.best_eval,
        }
        return ckpt.save_checkpoint(
            self.checkpoint_root, name or f"update_{self.update_index:06d}", weights=weights,
            trainer_state={"optimizer": self.optimizer.state_dict(), "rng": rng_tensors(),
                           "sample_orders": list(self._orders)}, state=state,
            config_yaml=OmegaConf.to_yaml(self.cfg), keep=self.cfg.checkpoint.keep, update_latest=name is None)
