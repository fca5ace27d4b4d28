"""The actor-critic assembly: backbone -> tokens H -> (action expert, value head).

When the backbone's frozen stage holds nothing trainable, the features it produced at a rollout step are what
the PPO update reads (feature caching): the pretrained towers run once per env step and never during the update
epochs; only the backbone's small trainable projection and the heads run there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import nn

from critics import build_critic
from policies import build_policy
from vla.backbones import Backbone, FrozenFeatures, Tokens, build_backbone
from vla.checkpoint import CheckpointError
from vla.errors import ConfigError
from vla.normalize import RunningMeanStd

# Update inputs under this prefix are cached outputs of the backbone's frozen stage.
FROZEN_PREFIX = "frozen/"


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A numpy batch as a tensor on ``device``. To a GPU through pinned (page-locked) memory with a non-blocking
    copy: the transfer is a DMA that does not stall the host, and the kernels that read it queue behind it on
    the same stream."""
    if device.type != "cuda":
        return torch.as_tensor(array, device=device)
    return torch.from_numpy(np.ascontiguousarray(array)).pin_memory().to(device, non_blocking=True)


@dataclass
class ActOutput:
    action: torch.Tensor  # (B, A) normalized action sample (or mean when deterministic)
    log_prob: torch.Tensor  # (B,)
    value: torch.Tensor  # (B,)
    update_inputs: Dict[str, torch.Tensor]  # what the PPO update needs to re-evaluate this step


class ActorCritic(nn.Module):
    def __init__(self, backbone: Backbone, expert: nn.Module, critic: nn.Module, state_dim: int,
                 norm_state: bool, clip: float, privileged_dim: int = 0, privileged_critic: bool = False,
                 privileged_aux: bool = False, privileged_aux_source: str = "expert",
                 privileged_aux_loss: str = "mse"):
        super().__init__()
        self.backbone = backbone
        self.expert = expert
        self.critic = critic
        self.norm_state = norm_state
        self.clip = clip
        self.state_rms = RunningMeanStd(shape=(state_dim,))
        # Simulator state the env exposes as obs["privileged"], normalized like the state, for training only:
        # the value head may read it (asymmetric critic), and an auxiliary head may learn to predict it from
        # the actor's features (``aux_loss``); the actor itself never reads it.
        self.privileged_rms = RunningMeanStd(shape=(privileged_dim,)) if privileged_dim else None
        self.privileged_critic = privileged_critic
        if privileged_aux_source not in ("expert", "first_token"):
            raise ConfigError(f"algo.privileged_aux_source={privileged_aux_source!r}; use 'expert' (the action "
                              "expert's features) or 'first_token' (the backbone's first token, e.g. the towers' "
                              "grounded token)")
        self.privileged_aux_source = privileged_aux_source
        if privileged_aux_loss not in ("mse", "huber"):
            raise ConfigError(f"algo.privileged_aux_loss={privileged_aux_loss!r}; use 'mse' (squared error) or "
                              "'huber' (squared below 1, linear above: outliers weigh less)")
        self.privileged_aux_loss = privileged_aux_loss
        aux_width = expert.feature_dim if privileged_aux_source == "expert" else backbone.hidden_size
        self.privileged_aux = nn.Linear(aux_width, privileged_dim) if privileged_aux else None
        self.aux_loss: Optional[torch.Tensor] = None  # of the last ``evaluate`` call, with gradients
        # Each distinct instruction gets an id the first time it is seen; observations carry the id, and
        # backbones look the text up (and cache its encoding) by id: text is encoded once per instruction.
        self.instruction_ids: Dict[str, int] = {}
        self.nonfinite_states = 0
        self.backbone.instruction_texts = []

    @classmethod
    def from_config(cls, cfg, observation_space, action_space) -> "ActorCritic":
        backbone = build_backbone(cfg.backbone, observation_space)
        state_dim = int(observation_space["state"].shape[0])
        action_dim = int(np.prod(action_space.shape))
        head_state_dim = 0 if backbone.encodes_state else state_dim
        privileged_dim = 0
        privileged_aux = bool(cfg.algo.get("privileged_aux_coef", 0.0))
        if cfg.critic.privileged or privileged_aux:
            if "privileged" not in observation_space.spaces:
                raise ConfigError("critic.privileged=true and algo.privileged_aux_coef>0 need the env to emit "
                                  "obs['privileged'] (on tabletop: env.privileged_obs=true); this env's "
                                  f"observation keys: {sorted(observation_space.spaces)}")
            privileged_dim = int(observation_space["privileged"].shape[0])
        expert = build_policy(cfg.policy, backbone.hidden_size, head_state_dim, action_dim, backbone.grounded_tokens)
        critic_state_dim = head_state_dim + (privileged_dim if cfg.critic.privileged else 0)
        critic = build_critic(cfg.critic, backbone.hidden_size, critic_state_dim, backbone.grounded_tokens)
        return cls(backbone, expert, critic, state_dim, cfg.algo.norm_state, cfg.algo.clip_norm, privileged_dim,
                   privileged_critic=cfg.critic.privileged, privileged_aux=privileged_aux,
                   privileged_aux_source=cfg.algo.get("privileged_aux_source", "expert"),
                   privileged_aux_loss=cfg.algo.get("privileged_aux_loss", "mse"))

    @property
    def actions_per_decision(self) -> int:
        """Env steps one action sample runs (an action chunk's executed part; 1 without chunks)."""
        return getattr(self.expert, "execute_steps", 1)

    # ----------------------------------------------------------------------------------------- parameters
    def actor_parameters(self) -> List[nn.Parameter]:
        aux = list(self.privileged_aux.parameters()) if self.privileged_aux is not None else []
        return [p for p in self.expert.parameters() if p.requires_grad] + self.backbone.trainable_parameters() + aux

    def critic_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.critic.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """What a checkpoint holds: heads, normalizer statistics and the backbone's trainable weights only
        (frozen backbone weights are reloaded from the backbone's own source)."""
        trainable_backbone = {f"backbone.{n}" for n, p in self.backbone.named_parameters() if p.requires_grad}
        return {
            name: tensor
            for name, tensor in self.state_dict().items()
            if not name.startswith("backbone.") or name in trainable_backbone
        }

    def load_trainable_state_dict(self, weights: Dict[str, torch.Tensor], source: str) -> None:
        """Load what ``trainable_state_dict`` saved; refuse weights made for a different model, naming them."""
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        wrong_shape = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
        if missing or unexpected or wrong_shape:
            raise CheckpointError(
                f"checkpoint {source} holds weights for a different model (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, wrong shape {wrong_shape[:5]}); load it with the backbone, "
                "policy and critic config it was trained with")
        self.load_state_dict(weights, strict=False)

    # ------------------------------------------------------------------------------------------- forward
    def instruction_id(self, text: str) -> int:
        if not isinstance(text, str):
            raise ConfigError(f"observation 'instruction' must be a str, got {type(text).__name__}: {text!r}")
        if text not in self.instruction_ids:
            self.instruction_ids[text] = len(self.instruction_ids)
            self.backbone.instruction_texts.append(text)
        return self.instruction_ids[text]

    def to_tensors(self, obs: Mapping[str, np.ndarray], update_stats: bool = False) -> Dict[str, torch.Tensor]:
        """Numpy observation batch -> tensors on the model's device: state normalized (stats updated if asked),
        images as uint8 (B, H, W, 3), instructions as ``instruction_id`` (B,) into ``backbone.instruction_texts``."""
        device = self.state_rms.mean.device
        out = {}
        for key, value in obs.items():
            if key == "instruction":
                ids = [self.instruction_id(text) for text in value]
                out["instruction_id"] = torch.as_tensor(ids, dtype=torch.long, device=device)
            elif isinstance(value, np.ndarray):
                out[key] = to_device(value, device)
        state = out["state"].float()
        finite = torch.isfinite(state).all(dim=-1)
        if not bool(finite.all()):
            # A NaN/inf state must not poison the normalizer or reach the networks; the trainer counts these
            # (``nonfinite_states``) and skips the update they are part of.
            self.nonfinite_states += int((~finite).sum())
        if self.norm_state:
            if update_stats and bool(finite.any()):
                self.state_rms.update(state[finite])
            state = self.state_rms.normalize(state, self.clip)
        out["state"] = torch.nan_to_num(state, nan=0.0, posinf=self.clip, neginf=-self.clip)
        if self.privileged_rms is None:
            out.pop("privileged", None)  # nothing reads it: keep it out of rollout storage
        elif "privileged" in out:
            privileged = out["privileged"].float()
            finite = torch.isfinite(privileged).all(dim=-1)
            if self.norm_state:
                if update_stats and bool(finite.any()):
                    self.privileged_rms.update(privileged[finite])
                privileged = ((privileged.double() - self.privileged_rms.mean) / self.privileged_scale()).clamp(
                    -self.clip, self.clip).float()
            out["privileged"] = torch.nan_to_num(privileged, nan=0.0, posinf=self.clip, neginf=-self.clip)
        return out

    def privileged_scale(self) -> torch.Tensor:
        """The one scale ``obs["privileged"]`` is normalized by (with ``norm_state``): the root of its dimensions'
        mean variance, not one scale each, so a dimension that barely varies (an object's height on the table)
        is not blown up into noise that the auxiliary head is then asked to predict."""
        return torch.sqrt(self.privileged_rms.var.mean() + 1e-8)

    @torch.no_grad()
    def predict_privileged(self, obs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The auxiliary head's prediction of ``obs["privileged"]`` in the env's units, from the actor's own
        features of ``obs`` (a ``to_tensors`` batch): where the policy places things."""
        if self.privileged_aux is None:
            raise ConfigError("this policy has no auxiliary privileged head (algo.privileged_aux_coef was 0)")
        _, features = self._aux_features(self.encode(obs), obs["state"])
        predicted = self.privileged_aux(features).double()
        if self.norm_state:
            predicted = predicted * self.privileged_scale() + self.privileged_rms.mean
        return predicted

    def _aux_features(self, tokens: Tokens, state: torch.Tensor):
        """(action distribution, the features the auxiliary head reads)."""
        head_state = None if self.backbone.encodes_state else state
        if self.privileged_aux_source == "expert":
            return self.expert(tokens, head_state, return_features=True)
        return self.expert(tokens, head_state), tokens.hidden[:, 0]

    def encode_frozen(self, obs: Dict[str, torch.Tensor]) -> FrozenFeatures:
        """The backbone's frozen stage; without gradients unless it holds trainable adapters."""
        if self.backbone.is_trainable:
            return self.backbone.encode_frozen(obs)
        with torch.no_grad():
            return self.backbone.encode_frozen(obs)

    def encode(self, obs: Dict[str, torch.Tensor]) -> Tokens:
        return self.backbone.project(self.encode_frozen(obs))

    def heads(self, tokens: Tokens, state: torch.Tensor, privileged: Optional[torch.Tensor] = None,
              aux: bool = False):
        """(action distribution, value). With an asymmetric critic and no ``privileged`` input (evaluating on an
        env that does not emit it) the value is NaN: acting never needs it. ``aux``: also set ``aux_loss``, the
        auxiliary head's squared error predicting ``privileged`` from the actor's features."""
        head_state = None if self.backbone.encodes_state else state
        if aux and self.privileged_aux is not None and privileged is not None:
            dist, features = self._aux_features(tokens, state)
            predicted = self.privileged_aux(features)
            if self.privileged_aux_loss == "huber":  # twice torch's: error^2 below 1 (as mse), 2|error| - 1 above
                self.aux_loss = 2.0 * nn.functional.huber_loss(predicted, privileged, delta=1.0)
            else:
                self.aux_loss = nn.functional.mse_loss(predicted, privileged)
        else:
            dist = self.expert(tokens, head_state)
        if not self.privileged_critic:
            return dist, self.critic(tokens, head_state)
        if privileged is None:
            return dist, torch.full((state.shape[0],), float("nan"), device=state.device)
        critic_state = privileged if head_state is None else torch.cat([head_state, privileged], dim=-1)
        return dist, self.critic(tokens, critic_state)

    @torch.no_grad()
    def act(self, obs: Dict[str, torch.Tensor], deterministic: bool = False) -> ActOutput:
        features = self.encode_frozen(obs)
        dist, value = self.heads(self.backbone.project(features), obs["state"], obs.get("privileged"))
        action = dist.mean if deterministic else dist.sample()
        if self.backbone.is_trainable:
            inputs = dict(obs)
        else:  # feature caching: the update re-reads the frozen stage's output instead of running it again
            inputs = {**{FROZEN_PREFIX + key: feature for key, feature in features.items()}, "state": obs["state"]}
            if "privileged" in obs:
                inputs["privileged"] = obs["privileged"]
        return ActOutput(action, dist.log_prob(action), value, inputs)

    @torch.no_grad()
    def value(self, obs: Dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = self.encode(obs)
        return self.heads(tokens, obs["state"], obs.get("privileged"))[1]

    def evaluate(self, inputs: Dict[str, torch.Tensor], actions: torch.Tensor):
        """Log-prob and entropy of ``actions`` and V(s) for stored rollout inputs, with gradients (and
        ``aux_loss`` when the auxiliary privileged head is on). The trainable projection always runs here; the
        frozen stage only when ``act`` could not cache it."""
        features = {key[len(FROZEN_PREFIX):]: feature
                    for key, feature in inputs.items() if key.startswith(FROZEN_PREFIX)}
        if not features:
            features = self.encode_frozen(inputs)
        self.aux_loss = None
        dist, value = self.heads(self.backbone.project(features), inputs["state"], inputs.get("privileged"),
                                 aux=True)
        return dist.log_prob(actions), dist.entropy(), value, dist


class PolicyEnsemble(nn.Module):
    """Several trained policies acting as one (``vla-eval ensemble=[...]``, ``vla-demos ensemble=[...]``): the
    action is the average of the members' mean actions. Each member converts the observations with its own
    normalizer and runs its own backbone, so members may differ in everything but the env and action space.
    Evaluation and DAgger recording only: it has no log-probabilities or values and is never trained."""

    def __init__(self, members: List[ActorCritic]):
        super().__init__()
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least 2 policies, got {len(members)}")
        steps = sorted({member.actions_per_decision for member in members})
        if len(steps) > 1:
            raise ConfigError(f"the ensemble's policies run different action chunks ({steps} env steps per "
                              "decision); average policies of one policy.chunk_size")
        self.members = nn.ModuleList(members)

    @property
    def actions_per_decision(self) -> int:
        return self.members[0].actions_per_decision

    def to_tensors(self, obs: Mapping[str, np.ndarray], update_stats: bool = False) -> List[Dict[str, torch.Tensor]]:
        """One ``to_tensors`` batch per member (each normalizes with its own statistics)."""
        if update_stats:
            raise ConfigError("an ensemble is never trained: its members keep the statistics they were saved with")
        return [member.to_tensors(obs) for member in self.members]

    @torch.no_grad()
    def act(self, obs: List[Dict[str, torch.Tensor]], deterministic: bool = True) -> ActOutput:
        if not deterministic:
            raise ConfigError("an ensemble acts with the average of its policies' mean actions; sampling "
                              "(deterministic=false) is not defined for it")
        actions = [member.act(member_obs, deterministic=True).action for member, member_obs in zip(self.members, obs)]
        action = torch.stack(actions).mean(dim=0)
        nan = torch.full((action.shape[0],), float("nan"), device=action.device)
        return ActOutput(action, nan, nan, {})
