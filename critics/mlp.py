"""MLP value head over the pooled backbone tokens."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from vla.backbones.base import Tokens
from vla.nn import init_layer, mlp, pool_tokens, pooled_width


class MLPValueHead(nn.Module):
    def __init__(self, cfg, token_dim: int, state_dim: int, grounded_tokens: int = 0):
        super().__init__()
        self.pooling, self.grounded_tokens = cfg.pooling, grounded_tokens
        input_dim = pooled_width(cfg.pooling, token_dim, grounded_tokens) + state_dim
        self.body = mlp(input_dim, cfg.hidden_sizes, cfg.activation, activate_last=True)
        width = cfg.hidden_sizes[-1] if cfg.hidden_sizes else input_dim
        self.out = init_layer(nn.Linear(width, 1), 1.0)

    def forward(self, tokens: Tokens, state: Optional[torch.Tensor]) -> torch.Tensor:
        x = pool_tokens(tokens.hidden, tokens.mask, self.pooling, self.grounded_tokens)
        if state is not None:
            x = torch.cat([x, state], dim=-1)
        return self.out(self.body(x)).squeeze(-1)
