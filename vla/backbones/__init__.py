"""Backbones selected with ``backbone=<name>``."""

from __future__ import annotations

from vla.backbones.base import Backbone, Tokens
from vla.errors import ConfigError


def build_backbone(cfg, observation_space) -> Backbone:
    state_dim = int(observation_space["state"].shape[0])
    if cfg.name == "state":
        from vla.backbones.state import StateBackbone

        return StateBackbone(cfg, state_dim)
    raise ConfigError(f"backbone.name={cfg.name!r} is not a known backbone; known: ['state']")


__all__ = ["Backbone", "Tokens", "build_backbone"]
