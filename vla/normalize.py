"""Running normalizers for states and rewards. Their statistics are module buffers, so they travel with the
checkpoint and come back on resume and evaluation."""

from __future__ import annotations

import torch
from torch import nn


class RunningMeanStd(nn.Module):
    """Mean and variance of a stream of batches (Chan et al.'s parallel update), in float64."""

    def __init__(self, shape=(), epsilon: float = 1e-4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        # A small prior count keeps the first update from dividing by zero.
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> None:
        batch = batch.detach().to(torch.float64).reshape(-1, *self.mean.shape)
        batch_mean = batch.mean(dim=0)
        batch_var = batch.var(dim=0, unbiased=False)
        batch_count = batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        new_mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta.pow(2) * self.count * batch_count / total
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, x: torch.Tensor, clip: float) -> torch.Tensor:
        std = torch.sqrt(self.var + 1e-8)
        out = (x.to(torch.float64) - self.mean) / std
        return out.clamp(-clip, clip).to(x.dtype)


class RewardScaler(nn.Module):
    """Divides rewards by the running std of the discounted return (as in SB3's VecNormalize).

    The mean is not subtracted: shifting rewards would change which behaviour is optimal when episodes can end.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float):
        super().__init__()
        self.gamma = gamma
        self.clip = clip
        self.return_rms = RunningMeanStd(shape=())
        self.register_buffer("discounted_return", torch.zeros(num_envs, dtype=torch.float64))

    @torch.no_grad()
    def __call__(self, reward: torch.Tensor, done: torch.Tensor, update: bool = True) -> torch.Tensor:
        if update:
            self.discounted_return.mul_(self.gamma).add_(reward.to(torch.float64))
            self.return_rms.update(self.discounted_return)
            self.discounted_return[done.bool()] = 0.0
        scaled = reward.to(torch.float64) / torch.sqrt(self.return_rms.var + 1e-8)
        return scaled.clamp(-self.clip, self.clip).to(reward.dtype)
