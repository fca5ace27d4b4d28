"""Value head over the backbone tokens with a choice of pooling, learned-query attention included."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from vla.backbones.base import Tokens
from vla.errors import ConfigError
from vla.nn import POOLINGS as TOKEN_POOLINGS
from vla.nn import init_layer, mlp, pool_tokens, pooled_width

POOLINGS = ("attention",) + TOKEN_POOLINGS


class AttentionValueHead(nn.Module):
    """Pools the token sequence to one vector, appends the state when the backbone does not encode it, and maps
    it to V(s) with an MLP.

    ``pooling``: ``attention`` (a learned query attends over the real tokens; it can pick out the tokens that
    matter for the value, e.g. the image patches around the object), ``mean`` over real tokens, or the ``last``
    real token (a decoder VLM's summary position), the ``first`` token (the towers' instruction-grounded
    token) or the ``grounded`` tokens (the towers' one per camera, concatenated). ``detach_backbone`` stops the
    value loss's gradient at the tokens, so trainable backbone layers shared with the actor are shaped by the
    policy loss alone.
    """

    def __init__(self, cfg, token_dim: int, state_dim: int, grounded_tokens: int = 0):
        super().__init__()
        if cfg.pooling not in POOLINGS:
            raise ConfigError(f"critic.pooling={cfg.pooling!r}; choose one of {list(POOLINGS)}")
        self.pooling, self.grounded_tokens = cfg.pooling, grounded_tokens
        self.detach_backbone = cfg.detach_backbone
        if cfg.pooling == "attention":
            self.key_norm = nn.LayerNorm(token_dim)
            self.query = nn.Parameter(0.02 * torch.randn(1, 1, cfg.attention_dim))
            self.attention = nn.MultiheadAttention(cfg.attention_dim, cfg.num_heads, kdim=token_dim, vdim=token_dim,
                                                   batch_first=True)
            pooled_dim = cfg.attention_dim
        else:
            pooled_dim = pooled_width(cfg.pooling, token_dim, grounded_tokens)
        self.body = mlp(pooled_dim + state_dim, cfg.hidden_sizes, cfg.activation, activate_last=True)
        width = cfg.hidden_sizes[-1] if cfg.hidden_sizes else pooled_dim + state_dim
        self.out = init_layer(nn.Linear(width, 1), 1.0)

    def forward(self, tokens: Tokens, state: Optional[torch.Tensor]) -> torch.Tensor:
        hidden = tokens.hidden.detach() if self.detach_backbone else tokens.hidden
        if self.pooling == "attention":
            keys = self.key_norm(hidden)
            query = self.query.expand(hidden.shape[0], -1, -1)
            pooled = self.attention(query, keys, keys, key_padding_mask=~tokens.mask, need_weights=False)[0]
            pooled = pooled.squeeze(1)
        else:
            pooled = pool_tokens(hidden, tokens.mask, self.pooling, self.grounded_tokens)
        if state is not None:
            pooled = torch.cat([pooled, state], dim=-1)
        return self.out(self.body(pooled)).squeeze(-1)
