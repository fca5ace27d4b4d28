"""Action experts selected with ``policy=<name>``: ``forward(tokens, state) -> Distribution`` over
normalized actions in [-1, 1]."""

from __future__ import annotations
from vla.errors import ConfigError

POLICIES = ("gaussian_mlp", "gaussian_transformer")


def actions_per_decision(cfg) -> int:
    """Env steps one policy decision runs: the executed part of an action chunk (1 without chunks)."""
    execute_steps = cfg.get("execute_steps")
    return int(execute_steps if execute_steps is not None else cfg.get("chunk_size", 1))


def build_policy(cfg, token_dim: int, state_dim: int, action_dim: int, grounded_tokens: int = 0):
    """``grounded_tokens``: the backbone's (``Backbone.grounded_tokens``), for ``pooling=grounded``."""
    if cfg.name == "gaussian_mlp":
        from policies.gaussian import GaussianMLPExpert

        return GaussianMLPExpert(cfg, token_dim, state_dim, action_dim, grounded_tokens)
    if cfg.name == "gaussian_transformer":
        from policies.transformer import GaussianTransformerExpert

        return GaussianTransformerExpert(cfg, token_dim, state_dim, action_dim)
    raise ConfigError(f"policy.name={cfg.name!r} is not a known action expert; known: {list(POLICIES)}")
