"""Small network pieces shared by action experts, value heads and backbones."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from vla.errors import ConfigError

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "elu": nn.ELU}


def mlp(in_dim: int, hidden_sizes: Sequence[int], activation: str, out_dim: int | None = None,
        activate_last: bool = False) -> nn.Sequential:
    """Linear layers with orthogonal init (gain sqrt(2)) and ``activation`` between them.

    With ``out_dim`` a final linear layer is appended (initialised by the caller, see ``init_layer``).
    """
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation={activation!r}; choose one of {sorted(ACTIVATIONS)}")
    layers = []
    sizes = [in_dim, *hidden_sizes]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(init_layer(nn.Linear(a, b), math.sqrt(2)))
        if out_dim is not None or activate_last or i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    if out_dim is not None:
        layers.append(nn.Linear(sizes[-1], out_dim))
    return nn.Sequential(*layers)


def init_layer(layer: nn.Linear, gain: float, bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights and a constant bias, the initialisation PPO implementations rely on."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


POOLINGS = ("mean", "last", "first", "grounded")


def pooled_width(mode: str, token_dim: int, grounded_tokens: int) -> int:
    """Width of ``pool_tokens``' output; refuses ``grounded`` pooling on a backbone without grounded tokens."""
    if mode not in POOLINGS:
        raise ConfigError(f"pooling={mode!r}; choose one of {list(POOLINGS)}")
    if mode != "grounded":
        return token_dim
    if grounded_tokens < 1:
        raise ConfigError("pooling=grounded reads the backbone's instruction-grounded tokens (one per camera), and "
                          "this backbone has none: use backbone=towers with backbone.grounding_heads>0 on an env "
                          "with cameras and an instruction, or pooling=mean")
    return token_dim * grounded_tokens


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, mode: str, grounded_tokens: int = 0) -> torch.Tensor:
    """(B, T, D) tokens with (B, T) mask -> (B, D): ``mean`` over real tokens, the ``last`` real token, or the
    ``first`` token (a backbone's summary token, e.g. the towers' instruction-grounded token); or
    (B, grounded_tokens * D): the ``grounded`` tokens the backbone puts first (the towers' one per camera,
    concatenated: with front and wrist cameras, ``first`` would read the front camera's alone)."""
    if mode == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    if mode == "last":
        last = mask.long().cumsum(1).argmax(1)  # index of the last True
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if mode == "first":
        return hidden[:, 0]
    if mode == "grounded":
        return hidden[:, :grounded_tokens].flatten(1)
    raise ConfigError(f"pooling={mode!r}; choose one of {list(POOLINGS)}")
