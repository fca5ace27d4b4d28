import numpy as np
import torch

from vla.normalize import RewardScaler, RunningMeanStd


def test_running_mean_std_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(1000, 4))
    rms = RunningMeanStd(shape=(4,), epsilon=0.0 + 1e-12)
    for chunk in np.array_split(data, 7):
        rms.update(torch.as_tensor(chunk))
    np.testing.assert_allclose(rms.mean.numpy(), data.mean(0), rtol=1e-6)
    np.testing.assert_allclose(rms.var.numpy(), data.var(0), rtol=1e-6)


def test_normalize_clips_and_keeps_dtype():
    rms = RunningMeanStd(shape=(2,))
    rms.update(torch.tensor([[0.0, 0.0], [2.0, 2.0]]))
    out = rms.normalize(torch.tensor([[1.0, 1000.0]]), clip=5.0)
    assert out.dtype == torch.float32
    assert abs(float(out[0, 0])) < 1e-3 and float(out[0, 1]) == 5.0


def test_reward_scaler_divides_by_return_std_and_resets_on_done():
    rng = np.random.default_rng(1)
    rewards = rng.normal(1.0, 1.0, size=500)
    scaler = RewardScaler(num_envs=1, gamma=0.9, clip=100.0)
    discounted, returns = 0.0, []
    for r in rewards:
        discounted = 0.9 * discounted + r
        returns.append(discounted)
        out = scaler(torch.tensor([r]), torch.tensor([False]))
    # the running variance carries a 1e-4 prior count: negligible after 500 samples
    expected = rewards[-1] / np.sqrt(np.var(returns))
    assert abs(float(out[0]) - expected) < 1e-3 * abs(expected)
    scaler(torch.tensor([1.0]), torch.tensor([True]))
    assert float(scaler.discounted_return[0]) == 0.0
    # rewards are scaled, never shifted: the sign of every reward is kept
    assert float(scaler(torch.tensor([-0.5]), torch.tensor([False]), update=False)[0]) < 0


def test_normalizer_state_round_trips_through_state_dict():
    rms = RunningMeanStd(shape=(3,))
    rms.update(torch.randn(50, 3))
    other = RunningMeanStd(shape=(3,))
    other.load_state_dict(rms.state_dict())
    assert torch.equal(other.mean, rms.mean) and torch.equal(other.var, rms.var)
    assert torch.equal(other.count, rms.count)
