"""Value heads selected with ``critic=<name>``: ``forward(tokens, state) -> (B,)`` values."""

from __future__ import annotations
from vla.errors import ConfigError

CRITICS = ("mlp", "attention")


def build_critic(cfg, token_dim: int, state_dim: int, grounded_tokens: int = 0):
    """``grounded_tokens``: the backbone's (``Backbone.grounded_tokens``), for ``pooling=grounded``."""
    if cfg.name == "mlp":
        from critics.mlp import MLPValueHead

        return MLPValueHead(cfg, token_dim, state_dim, grounded_tokens)
    if cfg.name == "attention":
        from critics.attention import AttentionValueHead

        return AttentionValueHead(cfg, token_dim, state_dim, grounded_tokens)
    raise ConfigError(f"critic.name={cfg.name!r} is not a known value head; known: {list(CRITICS)}")
