"""Asymmetric actor-critic: the value head may read simulator state (obs["privileged"]); the actor never does."""

import numpy as np
import pytest
import torch

from envs import make_env
from tests.conftest import load_experiment, train_config
from vla.actor_critic import ActorCritic
from vla.errors import ConfigError
from vla.trainer import Trainer

PRIVILEGED = ["env=tabletop_reach", "env.privileged_obs=true", "critic.privileged=true"]


def test_tabletop_privileged_obs_is_the_named_objects_position_and_goal():
    env = make_env(train_config(*PRIVILEGED, "env.use_camera=false").env)
    obs, _ = env.reset(seed=3)
    measures = env.unwrapped.measures()
    np.testing.assert_allclose(obs["privileged"][:3], measures.target, atol=1e-6)
    assert obs["privileged"].shape == (6,) and obs["state"].shape == (7,)  # the state stays proprio only
    env.close()


def model_and_obs(*overrides, camera=False):
    cfg = train_config(*PRIVILEGED, f"env.use_camera={camera}", *overrides)
    env = make_env(cfg.env)
    observations = [env.reset(seed=seed)[0] for seed in range(8)]  # different scenes
    model = ActorCritic.from_config(cfg, env.observation_space, env.action_space)
    env.close()
    batch = {key: np.stack([obs[key] for obs in observations]) if isinstance(observations[0][key], np.ndarray)
             else [obs[key] for obs in observations] for key in observations[0]}
    return model, batch


@pytest.mark.parametrize("backbone", ["state", "towers"])
def test_the_value_reads_privileged_state_and_the_actor_does_not(backbone):
    torch.manual_seed(0)
    model, batch = model_and_obs(f"backbone={backbone}")
    obs = model.to_tensors(batch, update_stats=True)
    other = dict(obs, privileged=obs["privileged"] + torch.randn_like(obs["privileged"]))
    out, out_other = model.act(obs, deterministic=True), model.act(other, deterministic=True)
    torch.testing.assert_close(out.action, out_other.action)
    torch.testing.assert_close(out.log_prob, out_other.log_prob)
    assert not torch.allclose(out.value, out_other.value)
    assert "privileged" in out.update_inputs  # the update's value loss sees what the rollout's value saw
    without = {key: value for key, value in obs.items() if key != "privileged"}
    acted = model.act(without, deterministic=True)  # an eval env without privileged state: acting still works
    torch.testing.assert_close(acted.action, out.action)
    assert torch.isnan(acted.value).all()


def test_privileged_critic_without_privileged_obs_is_a_clear_error():
    cfg = train_config("env=tabletop_reach", "env.use_camera=false", "critic.privileged=true")
    env = make_env(cfg.env)
    with pytest.raises(ConfigError, match="env.privileged_obs=true"):
        ActorCritic.from_config(cfg, env.observation_space, env.action_space)
    env.close()


def test_training_with_a_privileged_critic_saves_its_normalizer(tmp_path, small_train_overrides):
    cfg = train_config(*small_train_overrides, *PRIVILEGED, "env.use_camera=false", "env.vector_mode=sync")
    trainer = Trainer(cfg, tmp_path)
    trainer.train()
    weights = trainer.model.trainable_state_dict()
    assert weights["privileged_rms.count"] > 1
    assert trainer.storage.data["in/privileged"].shape == (32, 2, 6)


@pytest.mark.parametrize("source", [
    ("algo.privileged_aux_source=expert", "policy=gaussian_transformer", "policy.width=32",
     "policy.feedforward_size=64"),
    ("algo.privileged_aux_source=first_token", "backbone.grounding_heads=2", "policy.pooling=first"),
])
def test_auxiliary_head_learns_privileged_state_from_the_actors_features(source):
    torch.manual_seed(0)
    model, batch = model_and_obs("backbone=towers", "algo.privileged_aux_coef=1.0", "critic.privileged=false",
                                 *source, camera=True)
    assert not model.privileged_critic and model.privileged_aux is not None
    obs = model.to_tensors(batch, update_stats=True)
    out = model.act(obs)
    optimizer = torch.optim.Adam(model.actor_parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        model.evaluate(out.update_inputs, out.action)
        losses.append(float(model.aux_loss))
        optimizer.zero_grad()
        model.aux_loss.backward()
        optimizer.step()
    assert losses[-1] < 0.3 * losses[0]
    projection = next(model.backbone.projection.parameters())
    assert projection.requires_grad  # the actor's inputs (projection, expert) are what the loss shapes


def test_huber_auxiliary_loss_matches_mse_on_small_errors_and_grows_linearly_on_outliers():
    torch.manual_seed(0)
    losses = {}
    for kind in ("mse", "huber"):
        model, batch = model_and_obs("algo.privileged_aux_coef=1.0", "critic.privileged=false",
                                     f"algo.privileged_aux_loss={kind}")
        obs = model.to_tensors(batch, update_stats=True)
        out = model.act(obs)
        with torch.no_grad():  # the head predicts zeros: the error is minus the (normalized) target
            model.privileged_aux.weight.zero_()
            model.privileged_aux.bias.zero_()
        inputs = dict(out.update_inputs)
        small = inputs["privileged"].clamp(-0.9, 0.9)
        for name, target in (("small", small), ("outlier", small + torch.where(small >= 0, 9.0, -9.0))):
            model.evaluate(dict(inputs, privileged=target), out.action)
            losses[kind, name] = float(model.aux_loss)
            expected = target.pow(2) if kind == "mse" or name == "small" else 2 * target.abs() - 1
            assert losses[kind, name] == pytest.approx(float(expected.mean()), rel=1e-5), (kind, name)
    assert losses["huber", "small"] == pytest.approx(losses["mse", "small"])
    assert losses["huber", "outlier"] < 0.25 * losses["mse", "outlier"]


def test_unknown_auxiliary_loss_is_a_clear_error():
    cfg = train_config(*PRIVILEGED, "env.use_camera=false", "algo.privileged_aux_coef=1.0",
                       "algo.privileged_aux_loss=l1")
    env = make_env(cfg.env)
    with pytest.raises(ConfigError, match="algo.privileged_aux_loss='l1'"):
        ActorCritic.from_config(cfg, env.observation_space, env.action_space)
    env.close()


@pytest.mark.parametrize("norm_state", [True, False])
def test_probe_push_reads_the_auxiliary_heads_positions_in_metres(norm_state):
    # ActorCritic.predict_privileged (through experiments/probe_push.py) undoes the privileged normalization: a
    # head that outputs the (normalized) target exactly places everything with zero error, and one shifted by a
    # unit is off by the normalization's scale (1 m without normalization).
    probe_push = load_experiment("probe_push")
    torch.manual_seed(0)
    model, batch = model_and_obs("backbone=towers", "backbone.grounding_heads=2", "policy.pooling=first",
                                 "algo.privileged_aux_coef=1.0", "algo.privileged_aux_source=first_token",
                                 f"algo.norm_state={norm_state}", camera=True)
    tensors = model.to_tensors(batch, update_stats=True)
    one = {key: value[:1] for key, value in tensors.items()}
    target = one["privileged"][0]
    with torch.no_grad():
        model.privileged_aux.weight.zero_()
        model.privileged_aux.bias.copy_(target)
    object_error, goal_error, on_table = probe_push.aux_position_errors(model, one, batch["privileged"][0])
    assert object_error == pytest.approx(0.0, abs=1e-5) and goal_error == pytest.approx(0.0, abs=1e-5) and on_table
    with torch.no_grad():
        model.privileged_aux.bias[0] += 1.0  # one unit in the object's x
    object_error, goal_error, _ = probe_push.aux_position_errors(model, one, batch["privileged"][0])
    scale = float(torch.sqrt(model.privileged_rms.var.mean() + 1e-8)) if norm_state else 1.0
    assert object_error == pytest.approx(scale, rel=1e-4) and goal_error == pytest.approx(0.0, abs=1e-5)


def test_probe_push_sorts_failures_by_named_object_and_kind():
    # A knocked-off object moved far, and is counted as knocked off only, not as moved short; an object that
    # never moved on the table is counted as never moved; the rest moved short of or wide of the zone.
    probe_push = load_experiment("probe_push")
    rows = [{"object": "sphere", "success": True, "moved": 0.2, "off_table": False},
            {"object": "sphere", "success": False, "moved": 2.5, "off_table": True},
            {"object": "sphere", "success": False, "moved": 0.0, "off_table": False},
            {"object": "box", "success": False, "moved": 0.05, "off_table": False},
            {"object": "box", "success": True, "moved": 0.15, "off_table": False}]
    assert probe_push.outcomes_by_object(rows) == [
        "box 1/2 (failures: 0 knocked off, 0 never moved, 1 moved short or wide)",
        "sphere 1/3 (failures: 1 knocked off, 1 never moved, 0 moved short or wide)"]
