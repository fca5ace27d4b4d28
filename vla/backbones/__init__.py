"""Backbones selected with ``backbone=<name>``."""

from __future__ import annotations

from vla.backbones.base import Backbone, FrozenFeatures, Tokens
from vla.errors import ConfigError

BACKBONES = ("state", "towers", "hf")


def build_backbone(cfg, observation_space) -> Backbone:
    if cfg.name == "state":
        from vla.backbones.state import StateBackbone

        return StateBackbone(cfg, int(observation_space["state"].shape[0]))
    if cfg.name == "towers":
        from vla.backbones.towers import TowersBackbone

        return TowersBackbone(cfg, observation_space)
    if cfg.name == "hf":
        from vla.backbones.hf import HFBackbone

        return HFBackbone(cfg, observation_space)
    raise ConfigError(f"backbone.name={cfg.name!r} is not a known backbone; known: {list(BACKBONES)}")


__all__ = ["Backbone", "FrozenFeatures", "Tokens", "build_backbone"]
