"""Gaussian action expert: a diagonal Normal over normalized actions in [-1, 1].

Samples are unbounded; the env wrapper clips them to [-1, 1] before mapping to the env's bounds, and the
log-probability is that of the unclipped sample (the standard PPO treatment, as in CleanRL and SB3).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.distributions import Independent, Normal

from vla.backbones.base import Tokens
from vla.errors import ConfigError
from vla.nn import init_layer, mlp, pool_tokens, pooled_width


def diagonal_gaussian(mean: torch.Tensor, log_std: torch.Tensor) -> Independent:
    """Independent Normals over the last dimension. Argument validation is off: it checks every rollout step's
    and minibatch's parameters on the CPU (a tenth of a small PPO update's time), and non-finite inputs are
    caught before they reach the networks (``ActorCritic.to_tensors``) and non-finite weights before any
    checkpoint (``Trainer.save``)."""
    return Independent(Normal(mean, log_std.exp(), validate_args=False), 1, validate_args=False)


def set_action_std(expert: nn.Module, std: float) -> None:
    """Make ``expert``'s action std ``std`` in every action dimension (in normalized action units): fills a
    state-independent ``log_std`` parameter, or zeroes a state-dependent head's weights and sets its bias."""
    log_std = math.log(std)
    if not expert.log_std_min <= log_std <= expert.log_std_max:
        raise ConfigError(f"action std {std} (algo.init_action_std) lies outside the policy's clamp "
                          f"[exp(policy.log_std_min), exp(policy.log_std_max)] = [{math.exp(expert.log_std_min):.3g}, "
                          f"{math.exp(expert.log_std_max):.3g}]")
    with torch.no_grad():
        if isinstance(expert.log_std, nn.Linear):
            expert.log_std.weight.zero_()
            expert.log_std.bias.fill_(log_std)
        else:
            expert.log_std.fill_(log_std)


class GaussianMLPExpert(nn.Module):
    def __init__(self, cfg, token_dim: int, state_dim: int, action_dim: int, grounded_tokens: int = 0):
        super().__init__()
        self.pooling, self.grounded_tokens = cfg.pooling, grounded_tokens
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max
        self.state_dependent_std = cfg.state_dependent_std
        input_dim = pooled_width(cfg.pooling, token_dim, grounded_tokens) + state_dim
        self.body = mlp(input_dim, cfg.hidden_sizes, cfg.activation, activate_last=True)
        width = cfg.hidden_sizes[-1] if cfg.hidden_sizes else input_dim
        self.feature_dim = width  # what ``return_features`` gives: the MLP's last hidden layer
        # Small output gain: the initial policy is near-zero-mean, so early actions do not saturate.
        self.mean = init_layer(nn.Linear(width, action_dim), 0.01)
        if cfg.state_dependent_std:
            self.log_std = init_layer(nn.Linear(width, action_dim), 0.01, bias=cfg.log_std_init)
        else:
            self.log_std = nn.Parameter(torch.full((action_dim,), float(cfg.log_std_init)))

    def forward(self, tokens: Tokens, state: Optional[torch.Tensor], return_features: bool = False):
        """The action distribution; with ``return_features`` also the last hidden layer (B, width), which
        auxiliary losses read."""
        x = pool_tokens(tokens.hidden, tokens.mask, self.pooling, self.grounded_tokens)
        if state is not None:
            x = torch.cat([x, state], dim=-1)
        features = self.body(x)
        mean = self.mean(features)
        log_std = self.log_std(features) if self.state_dependent_std else self.log_std.expand_as(mean)
        log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        dist = diagonal_gaussian(mean, log_std)
        return (dist, features) if return_features else dist
