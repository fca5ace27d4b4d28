"""GAE on hand-computed cases: termination never bootstraps, truncation bootstraps from V(final obs)."""

import torch

from vla.ppo import compute_gae

GAMMA, LAM = 0.9, 0.8


def run(rewards, values, terminated, truncated, final_values, next_value):
    t = lambda x: torch.tensor(x, dtype=torch.float32).reshape(-1, 1)  # noqa: E731
    b = lambda x: torch.tensor(x, dtype=torch.bool).reshape(-1, 1)  # noqa: E731
    adv, ret = compute_gae(t(rewards), t(values), b(terminated), b(truncated), t(final_values),
                           torch.tensor([next_value]), GAMMA, LAM)
    return adv.flatten().tolist(), ret.flatten().tolist()


def close(a, b):
    return all(abs(x - y) < 1e-5 for x, y in zip(a, b))


def test_no_episode_end_bootstraps_from_next_value():
    adv, ret = run([1.0, 2.0], [0.5, 0.25], [False, False], [False, False], [0, 0], next_value=4.0)
    d1 = 2.0 + GAMMA * 4.0 - 0.25  # 5.35
    d0 = 1.0 + GAMMA * 0.25 - 0.5  # 0.725
    assert close(adv, [d0 + GAMMA * LAM * d1, d1])
    assert close(ret, [d0 + GAMMA * LAM * d1 + 0.5, d1 + 0.25])


def test_termination_cuts_value_and_advantage_flow():
    # Episode terminates after step 0; step 1 starts a new episode.
    adv, _ = run([1.0, 2.0], [0.5, 0.25], [True, False], [False, False], [7.0, 0], next_value=4.0)
    d1 = 2.0 + GAMMA * 4.0 - 0.25
    d0 = 1.0 - 0.5  # no bootstrap at all, even though final_values holds a number
    assert close(adv, [d0, d1])


def test_truncation_bootstraps_from_final_observation_value():
    # Time limit after step 0: successor is V(final obs)=3.0, not V(reset obs)=values[1], not 0.
    adv, _ = run([1.0, 2.0], [0.5, 0.25], [False, False], [True, False], [3.0, 0], next_value=4.0)
    d1 = 2.0 + GAMMA * 4.0 - 0.25
    d0 = 1.0 + GAMMA * 3.0 - 0.5
    assert close(adv, [d0, d1])  # and no advantage flows from step 1 into step 0


def test_terminated_and_truncated_together_counts_as_termination():
    adv, _ = run([1.0], [0.5], [True], [True], [3.0], next_value=4.0)
    assert close(adv, [0.5])


def test_truncation_at_last_step_uses_final_value_not_next_value():
    adv, _ = run([0.0, 1.0], [0.0, 0.0], [False, False], [False, True], [0, 2.0], next_value=100.0)
    d1 = 1.0 + GAMMA * 2.0
    assert close(adv, [GAMMA * LAM * d1, d1])


def test_multiple_envs_are_independent():
    rewards = torch.tensor([[1.0, 1.0]])
    values = torch.zeros(1, 2)
    terminated = torch.tensor([[True, False]])
    truncated = torch.tensor([[False, False]])
    adv, _ = compute_gae(rewards, values, terminated, truncated, torch.zeros(1, 2), torch.tensor([5.0, 5.0]),
                         GAMMA, LAM)
    assert close(adv.flatten().tolist(), [1.0, 1.0 + GAMMA * 5.0])


def test_action_chunk_transitions_discount_by_gamma_to_the_steps_they_ran():
    # Step 0 ran a chunk of 3 env steps, step 1 was cut by the time limit after 2 (bootstrap from V(final)=3.0
    # discounted by gamma^2), step 2 ran 3 steps and bootstraps from next_value with gamma^3.
    t = lambda x: torch.tensor(x, dtype=torch.float32).reshape(-1, 1)  # noqa: E731
    b = lambda x: torch.tensor(x, dtype=torch.bool).reshape(-1, 1)  # noqa: E731
    discounts = t([GAMMA ** 3, GAMMA ** 2, GAMMA ** 3])
    adv, _ = compute_gae(t([1.0, 2.0, 0.5]), t([0.5, 0.25, 1.0]), b([False, False, False]),
                         b([False, True, False]), t([0.0, 3.0, 0.0]), torch.tensor([4.0]), GAMMA, LAM,
                         discounts=discounts)
    d2 = 0.5 + GAMMA ** 3 * 4.0 - 1.0
    d1 = 2.0 + GAMMA ** 2 * 3.0 - 0.25  # advantage does not flow past the truncation
    d0 = 1.0 + GAMMA ** 3 * 0.25 - 0.5
    assert close(adv.flatten().tolist(), [d0 + GAMMA ** 3 * LAM * d1, d1, d2])
