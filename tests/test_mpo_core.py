"""The MPO core (E-step weights and temperature dual, nonparametric KL, decoupled M-step, Gaussian maths, KL
penalties and duals) is one block of code copied byte for byte into every MPO script: the copies are checked
identical, and every script's copy is checked against brute-force or closed-form references."""

import importlib
import inspect
import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

import dime_morl as m

MPO_SCRIPTS = ["dime_bc", "dime_awbc", "dime_multi", "dime_finetune", "dime_morl"]
MPO_CORE = [
    "inv_softplus",
    "dual",
    "compute_weights_and_temperature_loss",
    "compute_nonparametric_kl",
    "gaussian_log_prob",
    "gaussian_kl",
    "compute_cross_entropy_loss",
    "compute_kl_penalty_and_dual_loss",
]


@pytest.fixture(params=MPO_SCRIPTS)
def core(request):
    return importlib.import_module(request.param)


def test_the_mpo_core_is_the_same_code_in_every_mpo_script():
    reference = importlib.import_module("dime_morl")
    for script in MPO_SCRIPTS:
        module = importlib.import_module(script)
        for name in MPO_CORE:
            assert inspect.getsource(getattr(module, name)) == inspect.getsource(getattr(reference, name)), (
                f"{script}.{name} differs from dime_morl.{name}: the MPO core is copied byte for byte"
            )
        assert module.MPO_FLOAT_EPSILON == reference.MPO_FLOAT_EPSILON


def test_one_objective_shapes_give_the_k_objective_values(core):
    """[N, B] with scalar ε, η equals the K = 1 slice of [N, B, 1] with [1]-shaped ones."""
    torch.manual_seed(5)
    q, eta = torch.randn(6, 4, dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64)
    w1, loss1 = core.compute_weights_and_temperature_loss(q, 0.1, eta)
    wk, lossk = core.compute_weights_and_temperature_loss(
        q[..., None], torch.tensor([0.1], dtype=torch.float64), eta[None]
    )
    assert torch.equal(w1, wk[..., 0]) and loss1.item() == pytest.approx(lossk.item(), rel=1e-15)
    assert core.compute_nonparametric_kl(w1).item() == pytest.approx(
        core.compute_nonparametric_kl(wk)[0].item()
    )


def solve_temperature(core, q_values: torch.Tensor, epsilon: torch.Tensor, steps: int = 3000) -> torch.Tensor:
    """Minimise the E-step temperature dual (eq. 45) with Adam, as the learner does."""
    log_temperature = torch.zeros(q_values.shape[-1], dtype=q_values.dtype, requires_grad=True)
    opt = torch.optim.Adam([log_temperature], lr=0.05)
    for _ in range(steps):
        _, loss = core.compute_weights_and_temperature_loss(q_values, epsilon, core.dual(log_temperature))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return core.dual(log_temperature).detach()


def test_e_step_weights_and_dual_match_formula(core):
    torch.manual_seed(0)
    q = torch.randn(7, 5, 2, dtype=torch.float64)  # [N, B, K]
    eta = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    eps = torch.tensor([0.1, 0.3], dtype=torch.float64)
    weights, loss = core.compute_weights_and_temperature_loss(q, eps, eta)
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


def test_optimal_temperature_meets_the_kl_bound(core):
    """At the dual optimum, KL(q_k || π_i) equals ε_k for every objective (eq. 36-45)."""
    torch.manual_seed(1)
    q = torch.randn(20, 64, 2, dtype=torch.float64) * torch.tensor([1.0, 30.0], dtype=torch.float64)
    eps = torch.tensor([0.1, 0.5], dtype=torch.float64)
    eta = solve_temperature(core, q, eps)
    weights, _ = core.compute_weights_and_temperature_loss(q, eps, eta)
    kl = core.compute_nonparametric_kl(weights)
    assert torch.allclose(kl, eps, rtol=0.05), (kl, eps)


def test_nonparametric_kl_extremes(core):
    n = 8
    uniform = torch.full((n, 3, 1), 1.0 / n)
    one_hot = torch.zeros(n, 3, 1)
    one_hot[2] = 1.0
    assert core.compute_nonparametric_kl(uniform).item() == pytest.approx(0.0, abs=1e-6)
    assert core.compute_nonparametric_kl(one_hot).item() == pytest.approx(math.log(n), abs=1e-5)


def test_decoupled_cross_entropy_value_and_gradient_split(core):
    """Mean gradient only from N(μ_θ, σ_i); stddev gradient only from N(μ_i, σ_θ) (Acme's decoupling)."""
    torch.manual_seed(3)
    n, b, d = 6, 4, 3
    actions, weights = torch.randn(n, b, d), torch.rand(n, b).softmax(0)
    mean, stddev = torch.randn(b, d, requires_grad=True), (torch.rand(b, d) + 0.5).requires_grad_()
    target_mean, target_stddev = torch.randn(b, d), torch.rand(b, d) + 0.5
    loss = core.compute_cross_entropy_loss(actions, weights, mean, stddev, target_mean, target_stddev)
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


def test_gaussian_log_prob_and_kl_match_torch_distributions(core):
    torch.manual_seed(4)
    mean_p, mean_q, x = torch.randn(5, 3), torch.randn(5, 3), torch.randn(7, 5, 3)
    std_p, std_q = torch.rand(5, 3) + 0.1, torch.rand(5, 3) + 0.1
    reference = Normal(mean_p, std_p).log_prob(x).sum(-1)
    assert torch.allclose(core.gaussian_log_prob(x, mean_p, std_p), reference, atol=1e-5)
    kl = torch.distributions.kl_divergence(Normal(mean_p, std_p), Normal(mean_q, std_q))
    assert torch.allclose(core.gaussian_kl(mean_p, std_p, mean_q, std_q), kl, atol=1e-5)


def test_kl_penalty_and_dual_gradients(core):
    kl = torch.tensor([[0.01, 0.03], [0.03, 0.05]], requires_grad=True)
    log_alpha = torch.tensor([0.0, 1.0], requires_grad=True)
    penalty, dual_loss, mean_kl = core.compute_kl_penalty_and_dual_loss(kl, core.dual(log_alpha), 0.02)
    alpha = core.dual(log_alpha).detach()
    assert penalty.item() == pytest.approx((alpha * torch.tensor([0.02, 0.04])).sum().item(), rel=1e-6)
    assert mean_kl.item() == pytest.approx(0.03, rel=1e-6)
    (g_log_alpha,) = torch.autograd.grad(penalty, log_alpha, allow_unused=True, retain_graph=True)
    assert g_log_alpha is None  # the penalty does not train the multiplier
    (g_kl,) = torch.autograd.grad(dual_loss, kl, allow_unused=True)
    assert g_kl is None  # the dual does not train the policy
    # The dual grows α where KL exceeds ε (dimension 1: 0.04 > 0.02) and shrinks it where KL is below.
    dual_loss = core.compute_kl_penalty_and_dual_loss(kl, core.dual(log_alpha), 0.03)[1]
    (g,) = torch.autograd.grad(dual_loss, log_alpha)
    assert g[0] > 0 and g[1] < 0


def test_dime_weights_are_scale_invariant_and_ls_weights_are_not():
    """Scaling one objective's Q by 10 leaves DiME's E-step weights unchanged, not LS's (Sec. 3.2, 4)."""
    torch.manual_seed(2)
    q = torch.randn(20, 32, 2, dtype=torch.float64)
    scaled = q * torch.tensor([1.0, 10.0], dtype=torch.float64)
    tradeoff = torch.tensor([[0.5, 0.5]], dtype=torch.float64).expand(32, 2)

    def weights(method, q_values):
        q_e, eps, _ = m.combine_objectives(q_values, tradeoff, method, 0.1)
        w, _ = m.compute_weights_and_temperature_loss(q_e, eps, solve_temperature(m, q_e, eps))
        return w

    dime, dime_scaled = weights("dime", q), weights("dime", scaled)
    ls, ls_scaled = weights("ls", q), weights("ls", scaled)
    assert (dime - dime_scaled).abs().max().item() < 5e-3
    assert (ls - ls_scaled).abs().max().item() > 0.05
