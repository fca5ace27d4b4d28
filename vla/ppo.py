"""PPO: rollout storage, GAE, the clipped loss and the update, written to read top to bottom like the paper
(Schulman et al., 2017) with the implementation details that decide whether it learns (Huang et al., 2022)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Dict, List, Optional

import torch
from torch import nn
from omegaconf import DictConfig, OmegaConf
from torch.distributions import kl_divergence

from vla.actor_critic import ActorCritic
from vla.errors import ConfigError


class RolloutStorage:
    """Fixed-size (num_steps, num_envs) buffers, allocated on the first ``add`` from the shapes seen."""

    def __init__(self, num_steps: int, num_envs: int, device: torch.device):
        self.num_steps, self.num_envs, self.device = num_steps, num_envs, device
        self.data: Dict[str, torch.Tensor] = {}
        self.step = 0

    def add(self, **fields: torch.Tensor) -> None:
        for key, value in fields.items():
            if key not in self.data:
                self.data[key] = torch.zeros((self.num_steps, *value.shape), dtype=value.dtype, device=self.device)
            self.data[key][self.step] = value
        self.step += 1

    def set(self, key: str, step: int, value: torch.Tensor) -> None:
        self.data[key][step] = value

    def reset(self) -> None:
        self.step = 0

    def flat(self, key: str) -> torch.Tensor:
        """(num_steps, num_envs, ...) -> (num_steps * num_envs, ...)."""
        value = self.data[key]
        return value.reshape(-1, *value.shape[2:])


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor,
                final_values: torch.Tensor, next_value: torch.Tensor, gamma: float, gae_lambda: float,
                discounts: Optional[torch.Tensor] = None):
    """Generalized advantage estimation over a (T, N) rollout.

    Step t's transition ends its episode when ``terminated[t]`` or ``truncated[t]``. Its successor value is
    0 on termination (the episode really ended), V(final observation) = ``final_values[t]`` on truncation (the
    episode was cut by a time limit; the task would have gone on), and otherwise V(s_{t+1}) = ``values[t+1]``
    (``next_value`` after the last step). Advantages never flow across an episode boundary.
    ``discounts`` (T, N), when given, replaces ``gamma`` per transition: a transition that ran an action chunk
    of k env steps (reward already summed with gamma^j inside the chunk) is discounted by gamma^k, also when
    it bootstraps from V(final observation) after a truncation mid-chunk.
    Returns (advantages, returns), each (T, N).
    """
    num_steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(next_value)
    for t in reversed(range(num_steps)):
        following = next_value if t == num_steps - 1 else values[t + 1]
        ended = torch.logical_or(terminated[t], truncated[t]).to(rewards.dtype)
        successor = torch.where(truncated[t] & ~terminated[t], final_values[t], following * (1.0 - ended))
        discount = gamma if discounts is None else discounts[t]
        delta = rewards[t] + discount * successor - values[t]
        running = delta + discount * gae_lambda * (1.0 - ended) * running
        advantages[t] = running
    return advantages, advantages + values


def clipped_policy_loss(new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                        clip_coef: float) -> torch.Tensor:
    """PPO's pessimistic surrogate, as a loss: mean of max(-A r, -A clip(r, 1-eps, 1+eps))."""
    ratio = (new_log_prob - old_log_prob).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)
    return torch.max(unclipped, clipped).mean()


def value_loss(new_value: torch.Tensor, old_value: torch.Tensor, returns: torch.Tensor,
               clip_coef: Optional[float]) -> torch.Tensor:
    """0.5 * squared error; with ``clip_coef`` the pessimistic max against the value clipped near the old one."""
    unclipped = (new_value - returns).pow(2)
    if clip_coef is None:
        return 0.5 * unclipped.mean()
    clipped_value = old_value + (new_value - old_value).clamp(-clip_coef, clip_coef)
    return 0.5 * torch.max(unclipped, (clipped_value - returns).pow(2)).mean()


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target): 1 is perfect, 0 is no better than a constant."""
    target_var = target.var()
    if target_var == 0:
        return float("nan")
    return float(1.0 - (target - predicted).var() / target_var)


@dataclass
class UpdateStats:
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float
    explained_variance: float
    grad_norm: float
    action_std: float
    epochs: float  # epochs completed (fractional when the KL early stop fired mid-epoch)
    optimizer_steps: int  # optimizer steps taken
    skipped_steps: int  # optimizer steps skipped because the loss or gradients were not finite
    early_stopped: bool
    init_kl: Optional[float] = None  # mean KL(pi_init || pi) over the minibatches (None: no init_kl_coef)
    privileged_aux: Optional[float] = None  # mean auxiliary privileged-state loss (None: privileged_aux_coef 0)


def frozen_copy(model: ActorCritic) -> ActorCritic:
    """The policy as it is now, frozen: the reference pi_init of the ``init_kl_coef`` term. Trainable weights
    are copied; the backbone's frozen weights are shared, not duplicated (a VLM's can be gigabytes), and so is
    the instruction list, so instruction ids mean the same text in both."""
    frozen = [t for t in model.backbone.parameters() if not t.requires_grad]
    frozen += [buffer for name, buffer in model.backbone.named_buffers() if not name.startswith("projection.")]
    reference = copy.deepcopy(model, memo={id(t): t for t in frozen})
    reference.requires_grad_(False)
    reference.backbone.instruction_texts = model.backbone.instruction_texts
    return reference


def fused_adam_supported(parameters: List[torch.Tensor]) -> bool:
    """Adam's fused kernel (one call per step for all tensors, instead of a few small ops per tensor: a quarter
    of a small PPO update's optimizer time on the CPU) takes floating-point tensors on the CPU or CUDA."""
    return bool(parameters) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in parameters)


class PPO:
    def __init__(self, cfg, model: ActorCritic, reference: Optional[ActorCritic] = None):
        """``reference``: the frozen initial policy (``frozen_copy``) that ``cfg.init_kl_coef`` pulls towards."""
        # Plain attributes: the update reads a dozen hyperparameters per minibatch, and an OmegaConf lookup costs
        # more than a small network's forward pass.
        self.cfg = SimpleNamespace(**OmegaConf.to_container(cfg, resolve=True)) if isinstance(cfg, DictConfig) \
            else cfg
        cfg = self.cfg
        self.model = model
        self.reference = reference
        value_lr = cfg.value_learning_rate if cfg.value_learning_rate is not None else cfg.learning_rate
        actor, critic = model.actor_parameters(), model.critic_parameters()
        self.optimizer = torch.optim.Adam(
            [
                {"params": actor, "lr": cfg.learning_rate, "name": "actor"},
                {"params": critic, "lr": value_lr, "name": "critic"},
            ],
            eps=cfg.adam_eps, fused=fused_adam_supported(actor + critic) or None,
        )
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        # torch.compile traces the minibatch loss on its first call (2-43 s measured) and again for the critic
        # warm-up's variant; fused forward and backward kernels pay that back within a few updates on a small model.
        self.loss_fn = torch.compile(self.minibatch_loss) if cfg.compile else self.minibatch_loss

    def set_progress(self, fraction_done: float) -> None:
        """Linear learning-rate annealing from the configured rates to zero."""
        scale = 1.0 - fraction_done if self.cfg.anneal_lr else 1.0
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * scale

    def minibatch_loss(self, inputs: Dict[str, torch.Tensor], actions: torch.Tensor, old_log_prob: torch.Tensor,
                       old_values: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor,
                       critic_only: bool):
        """The loss of one minibatch, with gradients, and its statistics as one tensor: the loss, policy loss,
        value loss, entropy, KL(pi_init || pi), auxiliary loss (NaN when off), approximate KL(old || new), clip
        fraction, mean action std (NaN for a distribution without one). Only tensor work, so ``algo.compile``
        can fuse it (with its backward) into a few kernels."""
        cfg = self.cfg
        new_log_prob, entropy, new_value, dist = self.model.evaluate(inputs, actions)
        log_ratio = new_log_prob - old_log_prob
        with torch.no_grad():
            # Schulman's low-variance estimator of KL(old || new).
            approx_kl = ((log_ratio.exp() - 1) - log_ratio).mean()
            clip_fraction = ((log_ratio.exp() - 1.0).abs() > cfg.clip_coef).float().mean()
        if cfg.norm_adv and advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        pg_loss = clipped_policy_loss(new_log_prob, old_log_prob, advantages, cfg.clip_coef)
        v_loss = value_loss(new_value, old_values, returns, cfg.clip_coef if cfg.clip_vloss else None)
        entropy_mean = entropy.mean()
        # KL(pi_init || pi) on this minibatch's observations: how far the policy moved from where the run
        # started (0 while the actor is held still in the critic warm-up).
        init_kl = torch.zeros((), device=new_value.device)
        if self.reference is not None and not critic_only:
            with torch.no_grad():
                init_dist = self.reference.evaluate(inputs, actions)[3]
            init_kl = kl_divergence(init_dist, dist).mean()
        aux = self.model.aux_loss
        if critic_only:
            loss = cfg.vf_coef * v_loss
        else:
            loss = pg_loss - cfg.ent_coef * entropy_mean + cfg.vf_coef * v_loss + cfg.init_kl_coef * init_kl
            if cfg.privileged_aux_coef and aux is not None:
                loss = loss + cfg.privileged_aux_coef * aux
        nan = torch.full((), float("nan"), device=new_value.device)
        std = dist.base_dist.scale.mean() if hasattr(dist, "base_dist") else nan
        stats = torch.stack([loss, pg_loss, v_loss, entropy_mean, init_kl, nan if aux is None else aux,
                             approx_kl, clip_fraction, std]).detach()
        return loss, stats

    def update(self, storage: RolloutStorage, advantages: torch.Tensor, returns: torch.Tensor,
               critic_only: bool = False) -> UpdateStats:
        """``critic_only``: critic warm-up, the value head trains and the actor's weights stay bit-identical."""
        cfg = self.cfg
        inputs = {key[len("in/"):]: storage.flat(key) for key in storage.data if key.startswith("in/")}
        actions, old_log_prob = storage.flat("action"), storage.flat("log_prob")
        old_values = storage.flat("value")
        flat_adv, flat_returns = advantages.reshape(-1), returns.reshape(-1)
        batch_size = flat_adv.shape[0]
        minibatch_size = max(1, batch_size // cfg.num_minibatches)
        actor_params = self.model.actor_parameters()
        all_params = [p for group in self.optimizer.param_groups for p in group["params"]]

        sums: Dict[str, float] = {k: 0.0 for k in ("policy", "value", "entropy", "kl", "clip", "grad", "std",
                                                   "init_kl", "aux")}
        count, skipped, early_stopped, epochs_done = 0, 0, False, 0.0
        for epoch in range(cfg.update_epochs):
            order = torch.randperm(batch_size, device=flat_adv.device)
            starts = list(range(0, batch_size - minibatch_size + 1, minibatch_size))
            for i, start in enumerate(starts):
                idx = order[start:start + minibatch_size]
                mb_inputs = {key: value[idx] for key, value in inputs.items()}
                try:
                    loss, stats = self.loss_fn(mb_inputs, actions[idx], old_log_prob[idx], old_values[idx],
                                               flat_adv[idx], flat_returns[idx], critic_only)
                except torch._dynamo.exc.BackendCompilerFailed as error:
                    raise ConfigError(f"algo.compile=true: torch.compile could not build the update ({error}); "
                                      "install a C++ compiler (e.g. apt install g++) or set algo.compile=false") \
                        from error
                # One host transfer per minibatch for the early stop and the logs (a GPU sync each).
                loss_value, pg_loss, v_loss, entropy_mean, init_kl, aux, approx_kl, clip_fraction, std = stats.tolist()
                if cfg.target_kl is not None and approx_kl > 1.5 * cfg.target_kl and not critic_only:
                    early_stopped = True
                    break

                self.optimizer.zero_grad(set_to_none=True)
                if not math.isfinite(loss_value):
                    skipped += 1
                    continue
                loss.backward()
                if critic_only:
                    for p in actor_params:
                        p.grad = None  # Adam skips parameters without gradients: the actor stays bit-identical
                grad_norm = nn.utils.clip_grad_norm_([p for p in all_params if p.grad is not None],
                                                     cfg.max_grad_norm)
                if not torch.isfinite(grad_norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    continue
                self.optimizer.step()

                count += 1
                sums["policy"] += pg_loss
                sums["value"] += v_loss
                sums["entropy"] += entropy_mean
                sums["kl"] += approx_kl
                sums["clip"] += clip_fraction
                sums["grad"] += float(grad_norm)
                sums["aux"] += aux
                sums["init_kl"] += init_kl
                sums["std"] += std
            if early_stopped:
                epochs_done = epoch + i / max(1, len(starts))
                break
            epochs_done = epoch + 1.0

        n = max(count, 1)
        return UpdateStats(
            policy_loss=sums["policy"] / n, value_loss=sums["value"] / n, entropy=sums["entropy"] / n,
            approx_kl=sums["kl"] / n, clip_fraction=sums["clip"] / n,
            explained_variance=explained_variance(old_values, flat_returns),
            grad_norm=sums["grad"] / n, action_std=sums["std"] / n, epochs=epochs_done,
            optimizer_steps=count, skipped_steps=skipped, early_stopped=early_stopped,
            init_kl=sums["init_kl"] / n if self.reference is not None else None,
            privileged_aux=None if math.isnan(sums["aux"]) else sums["aux"] / n,  # NaN: no auxiliary head
        )
