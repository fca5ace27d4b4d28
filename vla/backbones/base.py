"""The backbone contract: observations in, a token sequence H (B, T, D) with its mask out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import nn


@dataclass
class Tokens:
    """What the action expert and the value head read.

    hidden: (B, T, D) float; mask: (B, T) bool, True where a token is real (not padding).
    """

    hidden: torch.Tensor
    mask: torch.Tensor


class Backbone(nn.Module):
    """Base class of backbones.

    ``encode`` receives a batch of observations as a dict of tensors: ``state`` (B, S) already normalized,
    camera images (B, H, W, 3) uint8 under the env's image keys, and ``instruction_id`` (B,) indexing
    ``self.instruction_texts`` (filled by the actor-critic; the same text always has the same id, so an
    encoding can be cached per id). Subclasses set ``hidden_size`` and ``encodes_state`` (True when the tokens
    already carry the state vector, so the heads need not read it again).
    """

    hidden_size: int
    encodes_state: bool = False
    instruction_texts: List[str]

    def encode(self, obs: Dict[str, torch.Tensor]) -> Tokens:
        raise NotImplementedError

    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def is_trainable(self) -> bool:
        """False when nothing in the backbone trains: its tokens can then be cached at rollout time."""
        return len(self.trainable_parameters()) > 0

    def identity(self) -> Dict[str, str]:
        """What a checkpoint records to refuse loading into a different backbone."""
        return {"name": type(self).__name__}
