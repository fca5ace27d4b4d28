"""The backbone contract: observations in, a token sequence H (B, T, D) with its mask out.

A backbone is two stages:

- ``encode_frozen(obs) -> FrozenFeatures``: the pretrained towers. Their weights never change (unless LoRA
  adapters are on), so for a given observation their output never changes either: the actor-critic computes
  it once at rollout time and every PPO epoch re-reads it (feature caching).
- ``project(features) -> Tokens``: the small trainable layers (projections to a common width, learned
  embeddings). They train with the action expert, so they run in every update, on the cached features.

``encode(obs) = project(encode_frozen(obs))``. Trainable layers of the second stage live under the
``projection`` submodule; everything else belongs to the first stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

# What the frozen stage returns: tensors with a leading batch dimension, so rollout storage can keep them
# per step and minibatches can index them.
FrozenFeatures = Dict[str, torch.Tensor]


@dataclass
class Tokens:
    """What the action expert and the value head read.

    hidden: (B, T, D) float; mask: (B, T) bool, True where a token is real (not padding).
    """

    hidden: torch.Tensor
    mask: torch.Tensor


class Backbone(nn.Module):
    """Base class of backbones.

    ``encode_frozen`` receives a batch of observations as a dict of tensors: ``state`` (B, S) already
    normalized, camera images (B, H, W, 3) uint8 under the env's image keys, and ``instruction_id`` (B,)
    indexing ``self.instruction_texts`` (filled by the actor-critic; the same text always has the same id, so
    an encoding can be cached per id). Subclasses set ``hidden_size`` (width D of the projected tokens) and
    ``encodes_state`` (True when the tokens already carry the state vector, so the heads need not read it).
    """

    hidden_size: int
    encodes_state: bool = False
    # Instruction-grounded summary tokens at the front of the sequence (``pooling=grounded`` reads them).
    grounded_tokens: int = 0
    instruction_texts: List[str]

    def encode_frozen(self, obs: Dict[str, torch.Tensor]) -> FrozenFeatures:
        raise NotImplementedError

    def project(self, features: FrozenFeatures) -> Tokens:
        raise NotImplementedError

    def encode(self, obs: Dict[str, torch.Tensor]) -> Tokens:
        return self.project(self.encode_frozen(obs))

    def trainable_parameters(self) -> List[nn.Parameter]:
        """Everything the optimizer updates: the projection, plus LoRA adapters when they are on."""
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def is_trainable(self) -> bool:
        """True when the frozen stage has trainable parameters (LoRA adapters). Its output then changes as
        training goes, so rollouts keep raw observations and the update re-runs it; False: it can be cached."""
        return any(p.requires_grad for name, p in self.named_parameters() if not name.startswith("projection."))

    def train(self, mode: bool = True) -> "Backbone":
        # Pretrained towers always run in inference mode: batch-norm statistics and dropout are part of the
        # frozen function, and a cached feature must equal what a recomputation would give.
        super().train(mode)
        for name, child in self.named_children():
            if name != "projection":
                child.train(False)
        return self

    def identity(self) -> Dict[str, str]:
        """What a checkpoint records to refuse loading into a different backbone: it names the frozen weights
        (trainable weights are in the checkpoint itself)."""
        return {"name": type(self).__name__}


def image_keys(observation_space: spaces.Dict) -> List[str]:
    """Camera keys of an observation space (uint8 H x W x 3 boxes), ``image`` first, then the others sorted."""
    keys = [
        key for key, space in observation_space.spaces.items()
        if isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3
        and space.shape[-1] == 3
    ]
    return sorted(keys, key=lambda key: (key != "image", key))


def has_instruction(observation_space: spaces.Dict) -> bool:
    return "instruction" in observation_space.spaces
