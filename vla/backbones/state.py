"""The state backbone: tokens from the proprio/object state vector alone, for any Box-observation task."""

from __future__ import annotations

from typing import Dict

import torch

from vla.backbones.base import Backbone, FrozenFeatures, Tokens
from vla.nn import mlp
from vla.errors import ConfigError


class StateBackbone(Backbone):
    """``identity`` mode: the normalized state is one token and nothing trains (the heads hold all parameters,
    which is how separate actor and critic networks, the setting that works best for PPO on MuJoCo tasks
    (Andrychowicz et al., 2021), look under this contract). ``mlp`` mode: a trainable MLP makes the token, and
    actor and critic share it. The frozen stage is the identity: it passes the state through."""

    encodes_state = True

    def __init__(self, cfg, state_dim: int):
        super().__init__()
        if cfg.mode not in ("identity", "mlp"):
            raise ConfigError(f"backbone.mode={cfg.mode!r}; use 'identity' or 'mlp'")
        self.mode = cfg.mode
        self.state_dim = state_dim
        if cfg.mode == "mlp":
            self.projection = mlp(state_dim, [cfg.hidden_size] * cfg.num_layers, cfg.activation, activate_last=True)
            self.hidden_size = cfg.hidden_size
        else:
            self.projection = None
            self.hidden_size = state_dim

    def encode_frozen(self, obs: Dict[str, torch.Tensor]) -> FrozenFeatures:
        return {"state": obs["state"]}

    def project(self, features: FrozenFeatures) -> Tokens:
        state = features["state"]
        hidden = state if self.projection is None else self.projection(state)
        hidden = hidden.unsqueeze(1)
        return Tokens(hidden=hidden, mask=torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device))

    def identity(self) -> Dict[str, str]:
        return {"name": "state", "mode": self.mode, "state_dim": str(self.state_dim)}
