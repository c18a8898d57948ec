"""Unit tests of the maths in dime_morl.py against brute-force or closed-form references."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

import dime_morl as m


def solve_temperature(q_values: torch.Tensor, epsilon: torch.Tensor, steps: int = 3000) -> torch.Tensor:
    """Minimise the E-step temperature dual (eq. 45) with Adam, as the learner does."""
    log_temperature = torch.zeros(q_values.shape[-1], dtype=q_values.dtype, requires_grad=True)
    opt = torch.optim.Adam([log_temperature], lr=0.05)
    for _ in range(steps):
        _, loss = m.compute_weights_and_temperature_loss(q_values, epsilon, m.dual(log_temperature))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.dual(log_temperature).detach()


def test_e_step_weights_and_dual_match_formula():
    torch.manual_seed(0)
    q = torch.randn(7, 5, 2, dtype=torch.float64)  # [N, B, K]
    eta = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    eps = torch.tensor([0.1, 0.3], dtype=torch.float64)
    weights, loss = m.compute_weights_and_temperature_loss(q, eps, eta)
    for k in range(2):
        for b in range(5):
            z = [math.exp(q[i, b, k].item() / eta[k].item()) for i in range(7)]
            for i in range(7):
                assert weights[i, b, k].item() == pytest.approx(z[i] / sum(z), rel=1e-12)
    expected = sum(
        eta[k].item()
        * (
            eps[k].item()
            + np.mean(
                [
                    math.log(np.mean([math.exp(q[i, b, k].item() / eta[k].item()) for i in range(7)]))
                    for b in range(5)
                ]
            )
        )
        for k in range(2)
    )
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert not weights.requires_grad  # the weights are targets of the M-step, not trained through
    loss.backward()
    assert eta.grad is not None and torch.all(eta.grad != 0)


def test_optimal_temperature_meets_the_kl_bound():
    """At the dual optimum, KL(q_k || π_i) equals ε_k for every objective (eq. 36-45)."""
    torch.manual_seed(1)
    q = torch.randn(20, 64, 2, dtype=torch.float64) * torch.tensor([1.0, 30.0], dtype=torch.float64)
    eps = torch.tensor([0.1, 0.5], dtype=torch.float64)
    eta = solve_temperature(q, eps)
    weights, _ = m.compute_weights_and_temperature_loss(q, eps, eta)
    kl = m.compute_nonparametric_kl(weights)
    assert torch.allclose(kl, eps, rtol=0.05), (kl, eps)


def test_nonparametric_kl_extremes():
    n = 8
    uniform = torch.full((n, 3, 1), 1.0 / n)
    one_hot = torch.zeros(n, 3, 1)
    one_hot[2] = 1.0
    assert m.compute_nonparametric_kl(uniform).item() == pytest.approx(0.0, abs=1e-6)
    assert m.compute_nonparametric_kl(one_hot).item() == pytest.approx(math.log(n), abs=1e-5)


def test_dime_weights_are_scale_invariant_and_ls_weights_are_not():
    """Scaling one objective's Q by 10 leaves DiME's E-step weights unchanged, not LS's (Sec. 3.2, 4)."""
    torch.manual_seed(2)
    q = torch.randn(20, 32, 2, dtype=torch.float64)
    scaled = q * torch.tensor([1.0, 10.0], dtype=torch.float64)
    tradeoff = torch.tensor([[0.5, 0.5]], dtype=torch.float64).expand(32, 2)

    def weights(method, q_values):
        q_e, eps, _ = m.combine_objectives(q_values, tradeoff, method, 0.1)
        w, _ = m.compute_weights_and_temperature_loss(q_e, eps, solve_temperature(q_e, eps))
        return w

    dime, dime_scaled = weights("dime", q), weights("dime", scaled)
    ls, ls_scaled = weights("ls", q), weights("ls", scaled)
    assert (dime - dime_scaled).abs().max().item() < 5e-3
    assert (ls - ls_scaled).abs().max().item() > 0.05


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


def test_decoupled_cross_entropy_value_and_gradient_split():
    """Mean gradient only from N(μ_θ, σ_i); stddev gradient only from N(μ_i, σ_θ) (Acme's decoupling)."""
    torch.manual_seed(3)
    n, b, d = 6, 4, 3
    actions, weights = torch.randn(n, b, d), torch.rand(n, b).softmax(0)
    mean, stddev = torch.randn(b, d, requires_grad=True), (torch.rand(b, d) + 0.5).requires_grad_()
    target_mean, target_stddev = torch.randn(b, d), torch.rand(b, d) + 0.5
    loss = m.compute_cross_entropy_loss(actions, weights, mean, stddev, target_mean, target_stddev)
    expected = (
        -(
            weights
            * (
                Normal(mean, target_stddev).log_prob(actions).sum(-1)
                + Normal(target_mean, stddev).log_prob(actions).sum(-1)
            )
        )
        .sum(0)
        .mean()
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    mean_only = -(weights * Normal(mean, target_stddev).log_prob(actions).sum(-1)).sum(0).mean()
    (grad_mean,) = torch.autograd.grad(mean_only, mean)
    assert torch.allclose(mean.grad, grad_mean, atol=1e-6)


def test_gaussian_log_prob_and_kl_match_torch_distributions():
    torch.manual_seed(4)
    mean_p, mean_q, x = torch.randn(5, 3), torch.randn(5, 3), torch.randn(7, 5, 3)
    std_p, std_q = torch.rand(5, 3) + 0.1, torch.rand(5, 3) + 0.1
    reference = Normal(mean_p, std_p).log_prob(x).sum(-1)
    assert torch.allclose(m.gaussian_log_prob(x, mean_p, std_p), reference, atol=1e-5)
    kl = torch.distributions.kl_divergence(Normal(mean_p, std_p), Normal(mean_q, std_q))
    assert torch.allclose(m.gaussian_kl(mean_p, std_p, mean_q, std_q), kl, atol=1e-5)


def test_kl_penalty_and_dual_gradients():
    kl = torch.tensor([[0.01, 0.03], [0.03, 0.05]], requires_grad=True)
    log_alpha = torch.tensor([0.0, 1.0], requires_grad=True)
    penalty, dual_loss, mean_kl = m.compute_kl_penalty_and_dual_loss(kl, log_alpha, 0.02)
    alpha = m.dual(log_alpha).detach()
    assert penalty.item() == pytest.approx((alpha * torch.tensor([0.02, 0.04])).sum().item(), rel=1e-6)
    assert mean_kl.item() == pytest.approx(0.03, rel=1e-6)
    (g_log_alpha,) = torch.autograd.grad(penalty, log_alpha, allow_unused=True, retain_graph=True)
    assert g_log_alpha is None  # the penalty does not train the multiplier
    (g_kl,) = torch.autograd.grad(dual_loss, kl, allow_unused=True)
    assert g_kl is None  # the dual does not train the policy
    # The dual grows α where KL exceeds ε (dimension 1: 0.04 > 0.02) and shrinks it where KL is below.
    (g,) = torch.autograd.grad(m.compute_kl_penalty_and_dual_loss(kl, log_alpha, 0.03)[1], log_alpha)
    assert g[0] > 0 and g[1] < 0


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
