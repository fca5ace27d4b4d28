"""Action experts and value heads on random token sequences: distributions, masking, chunks, stop-gradient."""

import pytest
import torch
from torch.distributions import MultivariateNormal

from critics import build_critic
from policies import build_policy
from policies.gaussian import set_action_std
from tests.conftest import train_config
from vla.backbones.base import Tokens
from vla.errors import ConfigError

TOKEN_DIM, STATE_DIM, ACTION_DIM = 12, 5, 3


def random_tokens(batch: int = 6, length: int = 7) -> Tokens:
    """Random tokens whose samples have different numbers of real tokens (padding at the end)."""
    lengths = torch.randint(1, length + 1, (batch,))
    mask = torch.arange(length) < lengths.unsqueeze(1)
    return Tokens(hidden=torch.randn(batch, length, TOKEN_DIM), mask=mask)


def transformer_expert(*overrides: str):
    cfg = train_config("policy=gaussian_transformer", "policy.width=16", "policy.num_heads=2",
                       "policy.feedforward_size=32", *overrides).policy
    return build_policy(cfg, TOKEN_DIM, STATE_DIM, ACTION_DIM)


def attention_critic(*overrides: str):
    cfg = train_config("critic=attention", "critic.attention_dim=16", "critic.num_heads=2", *overrides).critic
    return build_critic(cfg, TOKEN_DIM, STATE_DIM)


@pytest.mark.parametrize("overrides", [
    (),
    ("policy.state_dependent_std=true",),
    ("policy.chunk_size=4",),
    ("policy.chunk_size=4", "policy.state_dependent_std=true", "policy.log_std_init=-1.0"),
    ("policy.chunk_size=4", "policy.execute_steps=2"),
    ("policy.chunk_size=4", "policy.execute_steps=1", "policy.state_dependent_std=true"),
])
def test_transformer_expert_log_prob_and_entropy_match_torch_distributions(overrides):
    torch.manual_seed(0)
    expert = transformer_expert(*overrides)
    if expert.state_dependent_std:  # give the std head weights, so the std really varies with the input
        torch.nn.init.normal_(expert.log_std.weight, std=0.5)
    tokens, state = random_tokens(), torch.randn(6, STATE_DIM)
    dist = expert(tokens, state)
    chunk = expert.execute_steps * ACTION_DIM  # the distribution covers the executed actions only
    assert expert.action_chunk == (expert.execute_steps, ACTION_DIM)
    actions = dist.sample()
    assert actions.shape == (6, chunk)

    mean, std = dist.mean, dist.stddev
    reference = MultivariateNormal(mean, covariance_matrix=torch.diag_embed(std.pow(2)))
    torch.testing.assert_close(dist.log_prob(actions), reference.log_prob(actions))
    torch.testing.assert_close(dist.entropy(), reference.entropy())
    if expert.state_dependent_std:
        assert not torch.allclose(std[0], std[1])
    else:
        torch.testing.assert_close(std, expert.log_std[:chunk].exp().expand_as(std))


def test_transformer_expert_ignores_padding_and_reads_the_state():
    torch.manual_seed(0)
    expert = transformer_expert()
    torch.nn.init.normal_(expert.mean.weight)  # the small init gain would hide differences
    tokens, state = random_tokens(), torch.randn(6, STATE_DIM)
    mean = expert(tokens, state).mean
    padded = tokens.hidden.clone()
    padded[~tokens.mask] = 100.0
    torch.testing.assert_close(expert(Tokens(padded, tokens.mask), state).mean, mean)
    real = tokens.hidden.clone()
    real[:, 0] += torch.randn(TOKEN_DIM)  # the first token is real in every sample (random: LayerNorm
    # would cancel a constant shift)
    assert not torch.allclose(expert(Tokens(real, tokens.mask), state).mean, mean)
    assert not torch.allclose(expert(tokens, state + 1.0).mean, mean)


def test_transformer_expert_without_state_for_backbones_that_encode_it():
    cfg = train_config("policy=gaussian_transformer", "policy.width=16", "policy.num_heads=2").policy
    expert = build_policy(cfg, TOKEN_DIM, 0, ACTION_DIM)
    assert expert(random_tokens(), None).mean.shape == (6, ACTION_DIM)


@pytest.mark.parametrize("pooling", ["attention", "mean", "last"])
def test_attention_critic_pools_only_real_tokens(pooling):
    torch.manual_seed(0)
    critic = attention_critic(f"critic.pooling={pooling}")
    tokens, state = random_tokens(), torch.randn(6, STATE_DIM)
    value = critic(tokens, state)
    assert value.shape == (6,)
    padded = tokens.hidden.clone()
    padded[~tokens.mask] = 100.0
    torch.testing.assert_close(critic(Tokens(padded, tokens.mask), state), value)
    last_real = tokens.mask.long().cumsum(1).argmax(1)
    changed = tokens.hidden.clone()
    changed[torch.arange(6), last_real] += torch.randn(TOKEN_DIM)
    assert not torch.allclose(critic(Tokens(changed, tokens.mask), state), value)


@pytest.mark.parametrize("detach", [False, True])
def test_attention_critic_detach_backbone_stops_the_value_gradient(detach):
    critic = attention_critic(f"critic.detach_backbone={str(detach).lower()}")
    tokens = random_tokens()
    hidden = tokens.hidden.requires_grad_(True)
    critic(Tokens(hidden, tokens.mask), torch.randn(6, STATE_DIM)).sum().backward()
    assert (hidden.grad is None) == detach
    assert all(p.grad is not None for p in critic.parameters())


def test_unknown_expert_and_critic_names_list_the_known_ones():
    policy_cfg, critic_cfg = train_config().policy, train_config().critic
    policy_cfg.name, critic_cfg.name = "diffusion", "ensemble"
    with pytest.raises(ConfigError, match="gaussian_transformer"):
        build_policy(policy_cfg, TOKEN_DIM, STATE_DIM, ACTION_DIM)
    with pytest.raises(ConfigError, match="attention"):
        build_critic(critic_cfg, TOKEN_DIM, STATE_DIM)
    with pytest.raises(ConfigError, match="pooling"):
        attention_critic("critic.pooling=max")


@pytest.mark.parametrize("overrides", [
    (),
    ("policy.state_dependent_std=true",),
    ("policy=gaussian_transformer", "policy.width=16", "policy.num_heads=2", "policy.feedforward_size=32",
     "policy.state_dependent_std=true"),
])
def test_set_action_std_changes_the_std_and_leaves_the_mean(overrides):
    torch.manual_seed(0)
    expert = build_policy(train_config(*overrides).policy, TOKEN_DIM, STATE_DIM, ACTION_DIM)
    if expert.state_dependent_std:
        torch.nn.init.normal_(expert.log_std.weight, std=0.5)
    tokens, state = random_tokens(), torch.randn(6, STATE_DIM)
    before = expert(tokens, state)
    set_action_std(expert, 0.1)
    after = expert(tokens, state)
    torch.testing.assert_close(after.mean, before.mean)
    torch.testing.assert_close(after.stddev, torch.full_like(after.stddev, 0.1))
    with pytest.raises(ConfigError, match=r"action std 0.0001 \(algo.init_action_std\) lies outside the policy"):
        set_action_std(expert, 1e-4)
