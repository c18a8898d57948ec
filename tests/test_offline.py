"""Offline scripts (dime_bc, dime_awbc, crr_ls, dime_multi): loss maths, runs, exact resume, bad input."""

import importlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from common import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["dime_bc", "dime_awbc", "crr_ls", "dime_multi"]
TINY = dict(env_id="cartpole_swingup", hidden_sizes=(16, 16), batch_size=8, num_samples=3, total_steps=20)
TINY.update(eval_every=10, eval_episodes=2, checkpoint_every=10, log_every=5)
TRADEOFF = {"dime_multi": {"eval_alphas": (0.2, 1.0)}}  # the others take a fixed --alpha


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """Three cartpole_swingup episodes: one uniform-random, two from zoo policies."""
    ds = datasets.build_zoo_dataset(
        "cartpole_swingup", episodes=3, seed=0, random_fraction=1 / 3, workers=1, progress=False
    )
    path = str(tmp_path_factory.mktemp("data") / "cartpole.hdf5")
    datasets.save_hdf5(ds, path)
    return path


def run(script: str, dataset: str, output_dir, **overrides) -> dict:
    module = importlib.import_module(script)
    tradeoff = TRADEOFF.get(script, {"alpha": 0.5})
    flags = {**TINY, **tradeoff, "dataset": dataset, "output_dir": str(output_dir), **overrides}
    return module.main(module.Args(**flags))


def run_dir(results: dict, output_dir) -> str:
    (name,) = [d for d in os.listdir(output_dir) if d.startswith(results["env_id"])]
    return os.path.join(output_dir, name)


# ------------------------------------------------------------------------------------ policy-loss maths
def loss_inputs(module, alpha: float, seed: int = 0, q_scale: float = 1.0, **flags):
    torch.manual_seed(seed)
    args = module.Args(alpha=alpha, hidden_sizes=(16, 16), num_samples=5, **flags)
    agent = module.Agent(3, 2, args)
    states, dataset_actions = torch.randn(7, 3), torch.rand(7, 2) * 2 - 1
    with torch.no_grad():
        target_mean, target_stddev = agent.target_policy(states)
    sampled = target_mean + target_stddev * torch.randn(5, 7, 2)
    q_values = torch.randn(6, 7) * q_scale
    valid = torch.tensor([1.0, 1, 1, 0, 1, 1, 1])
    batch = module.PolicyBatch(
        states, dataset_actions, valid, target_mean, target_stddev, sampled, q_values[:-1], q_values[-1]
    )
    return agent, args, batch


def test_crr_ls_at_alpha_1_without_trust_region_is_exactly_maximum_likelihood():
    import crr_ls

    agent, args, batch = loss_inputs(crr_ls, alpha=1.0, q_scale=50.0, trust_region=False)
    loss, _ = crr_ls.policy_loss(agent, batch, args)
    mean, stddev = agent.policy(batch.states)
    log_prob = torch.distributions.Normal(mean, stddev).log_prob(batch.dataset_actions).sum(-1)
    bc = -(batch.valid * log_prob).mean()
    torch.testing.assert_close(loss, bc, rtol=0, atol=1e-6)


def test_crr_ls_at_alpha_1_is_dime_bc_at_alpha_1():
    """The paper's BC baseline is "LS or DiME with α = 1": through the same trust region (same ε_μ), both
    give the policy and its M-step duals the same gradients (dime_bc adds only its E-step temperature's)."""
    import crr_ls
    import dime_bc

    grads = []
    for module in (crr_ls, dime_bc):
        agent, args, batch = loss_inputs(module, alpha=1.0, q_scale=50.0, epsilon_mean=0.0025)
        # The sampled actions' Q must not matter at α = 1.
        batch = batch._replace(q_sampled=batch.q_sampled + torch.randn(5, 7))
        loss, _ = module.policy_loss(agent, batch, args)
        loss.backward()
        params = [*agent.policy.parameters(), agent.log_alpha_mean, agent.log_alpha_stddev]
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_crr_ls_trust_region_bounds_the_policy_step():
    """Taking steps on the LS loss alone with π_i held fixed, the trust region's mean dual grows and keeps
    the policy mean far closer to π_i than plain weighted maximum likelihood does."""
    import crr_ls

    kls = {}
    for trust_region in (True, False):
        agent, args, batch = loss_inputs(crr_ls, alpha=0.5, q_scale=5.0, trust_region=trust_region, lr=1e-3)
        optimizers = crr_ls.make_optimizers(agent, args)
        for _ in range(500):
            loss, stats = crr_ls.policy_loss(agent, batch, args)
            for opt in optimizers.values():
                opt.zero_grad()
            loss.backward()
            for opt in optimizers.values():
                opt.step()
        mean, stddev = agent.policy(batch.states)
        kl = crr_ls.gaussian_kl(batch.target_mean, batch.target_stddev, mean, batch.target_stddev)
        kls[trust_region] = kl.mean().item()
        if trust_region:
            assert crr_ls.dual(agent.log_alpha_mean).min() > 2 * crr_ls.dual(torch.tensor(1.0))
    assert kls[True] < 0.5 * kls[False]


def test_crr_ls_weights_stay_finite_for_tiny_alpha():
    import crr_ls

    q_values = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1000.0, -1000.0, 1e-3]])  # A = ±1000
    weights = crr_ls.compute_advantage_weights(q_values[:-1], q_values[-1], alpha=0.001, max_weight=20.0)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights, torch.tensor([20.0, 0.0, math.exp(0.999)]))


def test_dime_awbc_weights_the_dataset_action_by_clipped_exp_advantage():
    import dime_awbc

    q_values = torch.tensor([[1.0, 0.0, 5.0], [3.0, 0.0, 5.0], [2.5, 10.0, 4.0]])  # A = 0.5, 10, -1
    weights = dime_awbc.bc_objective_weights(q_values[:-1], q_values[-1], dime_awbc.Args(alpha=0.5))
    torch.testing.assert_close(weights, torch.tensor([math.exp(0.5), 20.0, math.exp(-1.0)]))


@pytest.mark.parametrize("script", ["dime_bc", "dime_awbc"])
def test_dime_alpha_selects_the_objective(script):
    """α = 1: the sampled actions carry no weight; α = 0: the dataset actions carry none (eq. 11)."""
    module = importlib.import_module(script)
    for alpha, changed in ((1.0, "sampled"), (0.0, "dataset_actions")):  # the input that must not matter
        agent, args, batch = loss_inputs(module, alpha)
        _, stats = module.policy_loss(agent, batch, args)
        batch = batch._replace(**{changed: getattr(batch, changed) + 0.3})
        _, perturbed = module.policy_loss(agent, batch, args)
        torch.testing.assert_close(stats["policy_loss"], perturbed["policy_loss"])


def test_dime_bc_cross_entropy_matches_the_mixture_of_eq_11():
    """The M-step loss at initialisation (π_θ = π_i) is -Σ (1-α)w_i log π(a_i) - α log π(a_D), valid rows."""
    import dime_bc

    agent, args, batch = loss_inputs(dime_bc, alpha=0.45)
    _, stats = dime_bc.policy_loss(agent, batch, args)
    temperature = float(dime_bc.dual(agent.log_temperature).detach())
    weights = torch.softmax(batch.q_sampled / temperature, 0)
    normal = torch.distributions.Normal(batch.target_mean.detach(), batch.target_stddev.detach())
    log_prob = lambda a: normal.log_prob(a).sum(-1)  # noqa: E731
    per_state = (1 - 0.45) * (weights * log_prob(batch.sampled)).sum(0) + 0.45 * log_prob(
        batch.dataset_actions
    )
    expected = -2 * (batch.valid * per_state).mean()  # two decoupled halves, equal at π_θ = π_i
    torch.testing.assert_close(stats["policy_loss"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("script", SCRIPTS)
def test_offline_diagnostics_match_plain_reductions(script):
    """Masked reductions (no host sync) equal the same statistics over the valid rows, computed plainly."""
    module = importlib.import_module(script)
    g = torch.Generator().manual_seed(0)
    q_values, stddev = torch.randn(6, 9, generator=g), torch.rand(9, 2, generator=g) + 0.1
    weights = torch.tensor([0.05, 1.0, 12.0, 0.5, 2.0, 30.0, 0.01, 1.0, 3.0])
    valid = torch.tensor([1.0, 1, 1, 0, 1, 1, 0, 1, 1])
    batch = module.PolicyBatch(*[None] * 6, q_sampled=q_values[:-1], q_dataset=q_values[-1])._replace(
        valid=valid
    )
    stats = module.offline_diagnostics(batch, weights, stddev)
    keep = valid > 0
    advantage = (q_values[-1] - q_values[:-1].mean(0))[keep]
    w = weights[keep]
    expected = {
        "q_min": q_values[:-1].min(),
        "q_max": q_values[:-1].max(),
        "advantage_mean": advantage.mean(),
        "advantage_std": advantage.std(unbiased=False),
        "advantage_min": advantage.min(),
        "advantage_max": advantage.max(),
        "weight_below_0.1": torch.tensor(1 / 7),  # 0.05 (0.01 is not valid)
        "weight_above_10": torch.tensor(2 / 7),  # 12 and 30
        "weight_ess": w.sum() ** 2 / (len(w) * (w**2).sum()),
        "pi_stddev_min": stddev.min(),
        "pi_stddev_max": stddev.max(),
    }
    for key, value in expected.items():
        torch.testing.assert_close(stats[key], value, msg=key)
    uniform = module.offline_diagnostics(batch, torch.ones(9), stddev)
    torch.testing.assert_close(uniform["weight_ess"], torch.tensor(1.0))  # BC's weights: all equal


def test_critic_rank_correlation_is_spearman():
    """A critic whose Q is a monotone function of the Monte-Carlo return ranks the data perfectly; an
    anti-monotone one gives -1."""
    import dime_bc

    g = torch.Generator().manual_seed(0)
    data = {"observations": torch.randn(500, 3, generator=g), "actions": torch.rand(500, 1, generator=g)}
    data["returns"] = torch.zeros(500)
    data["mc_returns"] = data["observations"][:, 0] * 3 + 1
    atoms = torch.linspace(-10, 10, 11)

    class Monotone(torch.nn.Module):  # logits put the mass of Q toward the top atom as obs[0] grows
        def __init__(self, sign):
            super().__init__()
            self.sign = sign

        def forward(self, obs, actions):
            return self.sign * obs[:, :1] * atoms / 10

    assert dime_bc.critic_rank_correlation(Monotone(1.0), data, atoms) == pytest.approx(1.0)
    assert dime_bc.critic_rank_correlation(Monotone(-1.0), data, atoms) == pytest.approx(-1.0)


def test_discounted_returns_match_a_loop():
    rewards = np.array([1.0, 2, 3, 4, 5, 6], np.float32)
    terminals, timeouts = np.array([0, 0, 1, 0, 0, 0], bool), np.array([0, 0, 0, 0, 0, 1], bool)
    ds = datasets.make_dataset(
        np.zeros((6, 2)), np.zeros((6, 1)), rewards, np.zeros((6, 2)), terminals, timeouts
    )
    g = datasets.discounted_returns(ds, 0.5)
    np.testing.assert_allclose(
        g, [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3, 4 + 0.5 * 5 + 0.25 * 6, 5 + 0.5 * 6, 6]
    )


# ------------------------------------------------------------------------------------------------ runs
@pytest.mark.parametrize("script", SCRIPTS[:3])
def test_script_runs_and_writes_results_json(script, dataset, tmp_path):
    results = run(script, dataset, tmp_path, save_model=True)
    directory = run_dir(results, tmp_path)
    on_disk = json.load(open(os.path.join(directory, "results.json")))
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["algo"] == script and on_disk["env_id"] == "cartpole_swingup" and on_disk["alpha"] == 0.5
    assert on_disk["dataset"]["transitions"] == 3000 and on_disk["dataset"]["episodes"] == 3
    assert [e["step"] for e in on_disk["evaluations"]] == [0, 10, 20]
    assert all(
        len(e["returns"]) == 2 and e["mean"] == pytest.approx(np.mean(e["returns"]))
        for e in on_disk["evaluations"]
    )
    assert on_disk["final"] == {
        "alpha": 0.5,
        "mean": on_disk["evaluations"][-1]["mean"],
        "std": pytest.approx(np.std(on_disk["evaluations"][-1]["returns"])),
    }
    assert on_disk["learner_steps_per_second"] > 0 and on_disk["args"]["batch_size"] == 8
    later = on_disk["evaluations"][1:]  # the step-0 evaluation precedes every logged step
    assert all(-1.0 <= e["critic_rank_corr"] <= 1.0 for e in on_disk["evaluations"])
    for key in ("q_min", "q_max", "advantage_std", "weight_ess", "pi_stddev_min", "pi_stddev_max"):
        assert all(math.isfinite(e["diagnostics"][f"losses/{key}"]) for e in later), key
    assert all(e["diagnostics"]["losses/q_min"] <= e["diagnostics"]["losses/q_max"] for e in later)
    for name in ("checkpoint.pt", "curve.png", "args.json"):
        assert os.path.exists(os.path.join(directory, name))
    assert on_disk["precision"] == "fp32"
    documented = open(os.path.join(os.path.dirname(__file__), "..", "docs", "dime_bc.md")).read()
    for key in [
        *on_disk,
        *on_disk["dataset"],
        *on_disk["evaluations"][-1],
    ]:  # docs/dime_bc.md lists every key
        assert f"`{key}`" in documented, f"results.json key {key} is not in docs/dime_bc.md"
    policy = torch.export.load(os.path.join(directory, "policy.pt2")).module()  # no project class needed
    mean, stddev = policy(torch.zeros(4, 5))
    assert mean.shape == stddev.shape == (4, 1) and (stddev > 0).all()


def test_dime_multi_evaluates_every_requested_alpha(dataset, tmp_path):
    results = run("dime_multi", dataset, tmp_path, variant="awbc", save_model=True)
    assert [(e["step"], e["alpha"]) for e in results["evaluations"]] == [
        (step, alpha) for step in (0, 10, 20) for alpha in (0.2, 1.0)
    ]
    assert [f["alpha"] for f in results["final"]] == [0.2, 1.0] and results["alpha"] is None
    assert results["best"] == max(results["final"], key=lambda f: f["mean"])
    directory = run_dir(results, tmp_path)
    assert os.path.exists(os.path.join(directory, "alphas.png"))
    policy = torch.export.load(os.path.join(directory, "policy.pt2")).module()  # input: [obs, α]
    assert policy(torch.zeros(3, 6))[0].shape == (3, 1)


def test_dime_multi_relabels_every_sample_with_a_fresh_alpha():
    import dime_multi

    args = dime_multi.Args(hidden_sizes=(8,), batch_size=64, num_samples=2, alpha_range=(0.3, 0.6))
    agent = dime_multi.Agent(3, 2, args)
    size = 100
    data = {"observations": torch.randn(size, 3), "next_observations": torch.randn(size, 3)}
    data.update(actions=torch.rand(size, 2), next_actions=torch.rand(size, 2), returns=torch.rand(size))
    data.update(discounts=torch.full((size,), 0.9), next_action_valid=torch.ones(size, dtype=torch.bool))
    seen = []
    agent.critic.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0][:, -1].clone()))
    atoms = torch.linspace(-10, 10, args.num_atoms)
    gen = torch.Generator().manual_seed(0)
    dime_multi.learner_step(agent, dime_multi.make_optimizers(agent, args), data, atoms, args, gen)
    (alpha,) = seen
    assert alpha.min() >= 0.3 and alpha.max() <= 0.6 and len(alpha.unique()) == 64


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_reproduces_an_uninterrupted_run(script, dataset, tmp_path):
    whole = run(script, dataset, tmp_path / "whole")
    first = run(script, dataset, tmp_path / "parts", total_steps=10)
    checkpoint = os.path.join(run_dir(first, tmp_path / "parts"), "checkpoint.pt")
    module = importlib.import_module(script)
    resumed = module.main(module.Args(resume=checkpoint, total_steps=20))
    assert len(resumed["evaluations"]) == len(whole["evaluations"])
    assert resumed["evaluations"] == whole["evaluations"]
    assert resumed["final"] == whole["final"] and resumed["learner_steps"] == 20


def cli(script: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"{script}.py", *flags], cwd=ROOT, capture_output=True, text=True)


def test_dataset_of_another_env_is_refused_with_one_line(dataset, tmp_path):
    result = cli(
        "dime_bc",
        "--env-id",
        "walker_walk",
        "--dataset",
        dataset,
        "--alpha",
        "0.45",
        "--output-dir",
        str(tmp_path),
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and "walker_walk" in result.stderr and "dims" in result.stderr
    assert not os.listdir(tmp_path)  # nothing written


@pytest.mark.parametrize("script,alpha", [("dime_bc", "1.5"), ("dime_awbc", "-0.1"), ("crr_ls", "0")])
def test_bad_alpha_is_refused_with_one_line(script, alpha, capsys):
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as info:
        module.main(module.Args(alpha=float(alpha)))
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: --alpha") and err.count("\n") == 1


def test_missing_alpha_names_the_flag(capsys):
    import dime_bc

    with pytest.raises(SystemExit):
        dime_bc.main(dime_bc.Args())
    assert "--alpha is required" in capsys.readouterr().err
