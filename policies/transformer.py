"""Transformer action expert: learned action queries cross-attend to the backbone tokens and a proprio token.

Each of the ``chunk_size`` queries yields one action of a chunk of consecutive actions. The first
``execute_steps`` of them (all by default: open loop) are executed before the policy decides again; the
distribution is a diagonal Gaussian over those executed actions, flattened (``execute_steps * action_dim``
dimensions), so PPO's ratio and entropy cover exactly what the env received. With ``execute_steps`` below
``chunk_size`` (re-planning) the later queries still shape the executed ones through the decoder's
self-attention but are never executed themselves. With ``chunk_size`` 1 it is a per-step policy like the MLP
expert.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from policies.gaussian import diagonal_gaussian
from vla.backbones.base import Tokens
from vla.errors import ConfigError
from vla.nn import init_layer


class GaussianTransformerExpert(nn.Module):
    """``forward(tokens, state) -> Independent(Normal)`` over (B, execute_steps * action_dim) normalized actions.

    The decoder uses no dropout: PPO needs the log-probability of an action under the update's network to
    equal the one computed at rollout time when the weights have not changed.
    """

    def __init__(self, cfg, token_dim: int, state_dim: int, action_dim: int):
        super().__init__()
        self.chunk_size = cfg.chunk_size
        self.execute_steps = cfg.chunk_size if cfg.execute_steps is None else cfg.execute_steps
        if cfg.chunk_size < 1 or not 1 <= self.execute_steps <= cfg.chunk_size:
            raise ConfigError(f"policy.chunk_size={cfg.chunk_size}, policy.execute_steps={cfg.execute_steps}: "
                              "need chunk_size >= 1 and 1 <= execute_steps <= chunk_size (null = chunk_size)")
        self.action_dim = action_dim
        # How a sample unflattens into the actions it holds, first action first.
        self.action_chunk = (self.execute_steps, action_dim)
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max
        self.state_dependent_std = cfg.state_dependent_std
        width = cfg.width

        self.feature_dim = width  # what ``return_features`` gives: the first action query's decoder output
        self.token_in = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, width))
        self.proprio_in = nn.Linear(state_dim, width) if state_dim > 0 else None
        self.action_queries = nn.Parameter(0.02 * torch.randn(cfg.chunk_size, width))
        layer = nn.TransformerDecoderLayer(width, cfg.num_heads, cfg.feedforward_size, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.num_layers, norm=nn.LayerNorm(width))
        # Small output gain: the initial policy is near-zero-mean, so early actions do not saturate.
        self.mean = init_layer(nn.Linear(width, action_dim), 0.01)
        if cfg.state_dependent_std:
            self.log_std = init_layer(nn.Linear(width, action_dim), 0.01, bias=cfg.log_std_init)
        else:
            self.log_std = nn.Parameter(torch.full((cfg.chunk_size * action_dim,), float(cfg.log_std_init)))

    def forward(self, tokens: Tokens, state: Optional[torch.Tensor], return_features: bool = False):
        """The action distribution; with ``return_features`` also the first query's decoder output (B, width),
        which auxiliary losses read."""
        context, context_mask = self.token_in(tokens.hidden), tokens.mask
        if self.proprio_in is not None:
            proprio = self.proprio_in(state).unsqueeze(1)
            context = torch.cat([context, proprio], dim=1)
            context_mask = torch.cat([context_mask, context_mask.new_ones(context_mask.shape[0], 1)], dim=1)
        queries = self.action_queries.expand(context.shape[0], -1, -1)
        actions = self.decoder(queries, context, memory_key_padding_mask=~context_mask)
        executed = self.execute_steps * self.action_dim
        mean = self.mean(actions).flatten(1)[:, :executed]
        if self.state_dependent_std:
            log_std = self.log_std(actions).flatten(1)[:, :executed]
        else:
            log_std = self.log_std[:executed].expand_as(mean)
        log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        dist = diagonal_gaussian(mean, log_std)
        return (dist, actions[:, 0]) if return_features else dist
