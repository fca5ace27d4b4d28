"""The state backbone: tokens from the proprio/object state vector alone, for any Box-observation task."""

from __future__ import annotations

from typing import Dict

import torch

from vla.backbones.base import Backbone, Tokens
from vla.nn import mlp
from vla.errors import ConfigError


class StateBackbone(Backbone):
    """``identity`` mode: the normalized state is one token and nothing trains (the heads hold all parameters,
    which is how separate actor and critic networks, the setting that works best for PPO on MuJoCo tasks
    (Andrychowicz et al., 2021), look under this contract). ``mlp`` mode: a trainable MLP makes the token, and
    actor and critic share it."""

    encodes_state = True

    def __init__(self, cfg, state_dim: int):
        super().__init__()
        if cfg.mode not in ("identity", "mlp"):
            raise ConfigError(f"backbone.mode={cfg.mode!r}; use 'identity' or 'mlp'")
        self.mode = cfg.mode
        self.state_dim = state_dim
        if cfg.mode == "mlp":
            self.net = mlp(state_dim, [cfg.hidden_size] * cfg.num_layers, cfg.activation, activate_last=True)
            self.hidden_size = cfg.hidden_size
        else:
            self.net = None
            self.hidden_size = state_dim

    def encode(self, obs: Dict[str, torch.Tensor]) -> Tokens:
        state = obs["state"]
        hidden = state if self.net is None else self.net(state)
        hidden = hidden.unsqueeze(1)
        return Tokens(hidden=hidden, mask=torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device))

    def identity(self) -> Dict[str, str]:
        return {"name": "state", "mode": self.mode, "state_dim": str(self.state_dim)}
