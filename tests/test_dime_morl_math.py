"""Unit tests of the maths in dime_morl.py against brute-force or closed-form references."""

import math

import numpy as np
import pytest
import torch

import dime_morl as m


def test_combine_objectives_per_method():
    q = torch.randn(4, 3, 2)
    tradeoff = torch.tensor([[1.0, 0.3]]).expand(3, 2)
    q_e, eps, mix = m.combine_objectives(q, tradeoff, "dime", 0.1)
    assert (
        torch.equal(q_e, q) and torch.allclose(eps, torch.tensor([0.1, 0.1])) and torch.equal(mix, tradeoff)
    )
    q_e, eps, mix = m.combine_objectives(q, tradeoff, "ls", 0.1)
    assert torch.allclose(q_e[..., 0], q[..., 0] + 0.3 * q[..., 1]) and eps.shape == (1,)
    assert torch.equal(mix, torch.ones(3, 1))
    q_e, eps, mix = m.combine_objectives(q, tradeoff, "mompo", 0.1)
    assert torch.allclose(eps, torch.tensor([0.1, 0.03])) and torch.equal(mix, torch.ones(3, 2))


def test_bandit_rewards_are_the_negated_test_functions():
    a = torch.tensor([[0.0], [1.0], [2.0], [-1.0]])
    assert torch.allclose(
        m.bandit_rewards("schaffer", a), torch.tensor([[0.0, -4.0], [-1.0, -1.0], [-4.0, 0.0], [-1.0, -9.0]])
    )
    ff = m.bandit_rewards("fonseca_fleming", a)
    assert torch.allclose(ff[1], torch.tensor([0.0, math.exp(-4.0) - 1.0]))
    assert torch.allclose(ff[3], torch.tensor([math.exp(-4.0) - 1.0, 0.0]))


def test_pareto_mask_and_hypervolume():
    points = np.array([[3.0, 1.0], [2.0, 2.0], [1.0, 3.0], [1.5, 1.5], [0.5, 0.5]])
    assert m.pareto_mask(points).tolist() == [True, True, True, False, False]
    # Staircase above the reference (0, 0): 3*1 + 2*(2-1) + 1*(3-2) = 6.
    assert m.hypervolume(points, np.array([0.0, 0.0])) == pytest.approx(6.0)
    brute = (
        sum(  # grid estimate of the dominated area for a second reference point
            any(x <= p[0] and y <= p[1] for p in points)
            for x in np.arange(1.005, 3.0, 0.01)
            for y in np.arange(1.005, 3.0, 0.01)
        )
        * 1e-4
    )
    assert m.hypervolume(points, np.array([1.0, 1.0])) == pytest.approx(brute, abs=0.02)


def test_replay_n_step_returns_match_a_loop(tmp_path):
    """Windows stop at terminals (no bootstrap) and at cuts (bootstrap); rewards discounted per step."""
    rows, envs, n, gamma = 12, 2, 3, 0.9
    replay = m.Replay(rows * envs, envs, 1, 1, 2, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    ends_at = {(4, 0): "terminal", (8, 0): "cut", (6, 1): "cut", (11, 1): "terminal"}
    rewards = rng.normal(size=(rows, envs, 2)).astype(np.float32)
    for t in range(rows):
        kind = [ends_at.get((t, e)) for e in range(envs)]
        replay.add(
            obs=torch.tensor([[t * 10.0 + e] for e in range(envs)]),
            actions=torch.zeros(envs, 1),
            rewards=torch.tensor(rewards[t]),
            next_obs=torch.tensor([[t * 10.0 + e + 100] for e in range(envs)]),
            terminals=torch.tensor([k == "terminal" for k in kind]),
            ends=torch.tensor([k is not None for k in kind]),
        )
    obs, _, returns, discounts, next_obs = replay.sample(500, n, gamma, g)
    for o, r, d, nxt in zip(obs[:, 0].tolist(), returns, discounts.tolist(), next_obs[:, 0].tolist()):
        t, e = divmod(int(round(o)), 10)
        expected, k = np.zeros(2), 0
        while True:
            expected += gamma**k * rewards[t + k, e]
            kind = ends_at.get((t + k, e))
            if kind or k == n - 1:
                break
            k += 1
        assert np.allclose(r.numpy(), expected, atol=1e-5)
        assert d == pytest.approx(0.0 if kind == "terminal" else gamma ** (k + 1), rel=1e-6)
        assert nxt == pytest.approx((t + k) * 10 + e + 100)
        assert t + n - 1 < rows  # never a window past the newest row


def test_replay_wraps_around_in_time_order():
    replay = m.Replay(4, 1, 1, 1, 2, torch.device("cpu"))
    for t in range(6):  # 6 rows into a buffer of 4: rows 2..5 remain
        replay.add(
            obs=torch.tensor([[float(t)]]),
            actions=torch.zeros(1, 1),
            rewards=torch.ones(1, 2),
            next_obs=torch.tensor([[t + 1.0]]),
            terminals=torch.tensor([False]),
            ends=torch.tensor([False]),
        )
    assert replay.chronological()["obs"][:, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
    obs, *_ = replay.sample(200, 2, 0.99, torch.Generator().manual_seed(0))
    assert set(obs[:, 0].tolist()) == {2.0, 3.0, 4.0}  # 5 has no successor yet


def test_tradeoff_vectors():
    """(1-α, α) on bandits, for ls and for a --multi policy (Fig. 5); (1, α) for single-α dime and mompo."""
    alpha = torch.tensor([0.25])
    cases = [
        (dict(env_id="schaffer", method="dime"), [0.75, 0.25]),
        (dict(env_id="cartpole_swingup", method="dime"), [1.0, 0.25]),
        (dict(env_id="cartpole_swingup", method="dime", multi=True), [0.75, 0.25]),
        (dict(env_id="cartpole_swingup", method="ls"), [0.75, 0.25]),
        (dict(env_id="cartpole_swingup", method="ls", multi=True), [0.75, 0.25]),
        (dict(env_id="cartpole_swingup", method="mompo"), [1.0, 0.25]),
    ]
    for flags, expected in cases:
        assert torch.allclose(m.tradeoff_vector(alpha, m.Args(**flags)), torch.tensor([expected])), flags


def test_policy_head_initial_distribution():
    policy = m.Policy(5, 3, (16, 16))
    mean, stddev = policy(torch.randn(10, 5))
    assert mean.abs().max() < 0.05
    assert torch.allclose(stddev, torch.full_like(stddev, 0.7), atol=0.01)
