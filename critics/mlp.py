"""MLP value head over the pooled backbone tokens."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from vla.backbones.base import Tokens
from vla.nn import init_layer, mlp, pool_tokens


class MLPValueHead(nn.Module):
    def __init__(self, cfg, token_dim: int, state_dim: int):
        super().__init__()
        self.pooling = cfg.pooling
        self.body = mlp(token_dim + state_dim, cfg.hidden_sizes, cfg.activation, activate_last=True)
        width = cfg.hidden_sizes[-1] if cfg.hidden_sizes else token_dim + state_dim
        self.out = init_layer(nn.Linear(width, 1), 1.0)

    def forward(self, tokens: Tokens, state: Optional[torch.Tensor]) -> torch.Tensor:
        x = pool_tokens(tokens.hidden, tokens.mask, self.pooling)
        if state is not None:
            x = torch.cat([x, state], dim=-1)
        return self.out(self.body(x)).squeeze(-1)
