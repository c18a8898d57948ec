"""dime_finetune.py: distillation at α = 1, the learned trade-off, runs, exact resume, bad teachers."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import dime_finetune as ft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(env_id="cartpole_swingup", hidden_sizes=(16, 16), batch_size=8, num_samples=4, num_envs=2)
TINY.update(total_env_steps=4000, learning_starts=1000, replay_ratio=0.1, eval_every=100, eval_episodes=2)
TINY.update(checkpoint_every=100)


class ConstantTeacher(nn.Module):
    """π_b(·|s) = N(0.8, 0.2²) in every state."""

    def forward(self, obs):
        shape = (len(obs), 1)
        return torch.full(shape, 0.8, device=obs.device), torch.full(shape, 0.2, device=obs.device)


def filled_replay(size: int = 64) -> ft.Replay:
    replay = ft.Replay(size, 1, 3, 1, "cpu")
    gen = torch.Generator().manual_seed(0)
    for _ in range(size):
        obs = torch.randn(1, 3, generator=gen)
        replay.add(
            obs=obs,
            actions=torch.rand(1, 1, generator=gen),
            rewards=torch.rand(1, generator=gen),
            next_obs=obs + 0.1,
            terminals=torch.zeros(1, dtype=torch.bool),
            ends=torch.zeros(1, dtype=torch.bool),
        )
    return replay


def test_alpha_1_with_fixed_eta2_distils_the_teacher():
    """α = 1 and η_2 = 1: the E-step target is π_b itself (eq. 8), so the policy mean moves to 0.8."""
    torch.manual_seed(0)
    args = ft.Args(
        alpha=1.0,
        fixed_eta2=True,
        hidden_sizes=(16,),
        batch_size=32,
        num_samples=16,
        lr=3e-3,
        epsilon_mean=0.1,
        return_threshold=0.0,
    )
    agent = ft.Agent(3, 1, args)
    optimizers = ft.make_optimizers(agent, args)
    replay, gen, atoms = (
        filled_replay(),
        torch.Generator().manual_seed(1),
        torch.linspace(-10, 10, args.num_atoms),
    )
    states = torch.randn(100, 3)
    before = (agent.policy(states)[0] - 0.8).abs().mean().item()
    for step in range(100):
        ft.learner_step(agent, optimizers, replay, ConstantTeacher(), atoms, args, gen)
        if step % 10 == 9:
            agent.update_targets()
    after = (agent.policy(states)[0] - 0.8).abs().mean().item()
    assert after < 0.25 * before, (before, after)


@pytest.mark.parametrize("policy_return,direction", [(-5.0, 1), (5.0, -1)])
def test_learned_alpha_rises_below_the_threshold_and_falls_above(policy_return, direction):
    """J(α) = α·(E[Q] - c) with E[Q] the actors' latest return: α grows below c = 0 and shrinks above it."""
    args = ft.Args(learn_alpha=True, hidden_sizes=(8,), return_threshold=0.0)
    agent = ft.Agent(3, 1, args)
    agent.policy_return.fill_(policy_return)
    optimizer = ft.make_optimizers(agent, args)["tradeoff"]
    states, mean, stddev = torch.randn(4, 3), torch.zeros(4, 1), torch.ones(4, 1)
    actions, q_task, log_ratio = torch.randn(5, 4, 1), torch.full((5, 4), -policy_return), torch.zeros(5, 4)
    before = ft.tradeoff(agent, args).item()
    loss, _ = ft.policy_loss(agent, ft.PolicyBatch(states, mean, stddev, actions, q_task, log_ratio), args)
    loss.backward()
    optimizer.step()
    assert (ft.tradeoff(agent, args).item() - before) * direction > 0


def test_ls_weights_scalarise_before_the_softmax():
    """ls: one E-step on (1-α)Q + α·log(π_b/π_i) (eq. 6); dime: the α-mixture of two E-steps (eq. 7)."""
    q_task, log_ratio, alpha = torch.randn(6, 4) * 3, torch.randn(6, 4), torch.tensor(0.25)
    for method in ("ls", "dime"):
        args = ft.Args(method=method, hidden_sizes=(8,), init_temperature=2.0)
        temperature = ft.dual(ft.Agent(3, 1, args).log_temperature)
        weights, _, _ = ft.e_step(q_task, log_ratio, temperature, alpha, args)
        if method == "ls":
            expected = torch.softmax(((1 - alpha) * q_task + alpha * log_ratio) / 2.0, 0)
        else:
            expected = (1 - alpha) * torch.softmax(q_task / 2.0, 0) + alpha * torch.softmax(
                log_ratio / 2.0, 0
            )
        torch.testing.assert_close(weights, expected, rtol=1e-4, atol=1e-6)


def run(tmp_path, **overrides) -> dict:
    return ft.main(ft.Args(**{**TINY, "output_dir": str(tmp_path), **overrides}))


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    whole = run(tmp_path / "whole", learn_alpha=True)
    first = run(tmp_path / "parts", learn_alpha=True, total_env_steps=2000)
    (name,) = os.listdir(tmp_path / "parts")
    resumed = ft.main(ft.Args(resume=str(tmp_path / "parts" / name / "checkpoint.pt"), total_env_steps=4000))
    assert first["env_steps"] == 2000 and resumed["env_steps"] == whole["env_steps"] == 4000
    assert resumed["evaluations"] == whole["evaluations"] and resumed["final"] == whole["final"]
    assert whole["teacher"]["mean"] > 100 and whole["alpha"] is None  # the middle zoo policy, learned α
    assert os.path.exists(tmp_path / "parts" / name / "curve.png")


def test_ls_with_a_fixed_alpha_runs(tmp_path):
    results = run(tmp_path, method="ls", alpha=0.25, total_env_steps=2000)
    assert results["alpha"] == 0.25 and all(e["alpha"] == 0.25 for e in results["evaluations"])
    documented = open(os.path.join(os.path.dirname(__file__), "..", "docs", "dime_finetune.md")).read()
    for key in [*results, *results["evaluations"][-1], *results["teacher"]]:  # every results.json key
        assert f"`{key}`" in documented, f"results.json key {key} is not in docs/dime_finetune.md"


@pytest.mark.parametrize(
    "teacher,message", [("missing.pt2", "not found"), ("zoo/cheetah_run/late.pt2", "cannot act")]
)
def test_bad_teacher_is_refused_with_one_line(tmp_path, teacher, message):
    result = subprocess.run(
        [
            sys.executable,
            "dime_finetune.py",
            "--env-id",
            "cartpole_swingup",
            "--teacher",
            teacher,
            "--output-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: --teacher") and message in result.stderr
    assert not os.listdir(tmp_path)


def test_tradeoff_logit_is_bounded():
    """E[Q] far below c pushes α up at every step; the logit stops at the bound instead of winding up."""
    args = ft.Args(learn_alpha=True, hidden_sizes=(8,), batch_size=8, num_samples=4, return_threshold=1e6)
    args.tradeoff_logit_bound, args.dual_lr = 0.5, 0.1
    agent = ft.Agent(3, 1, args)
    optimizers, gen = ft.make_optimizers(agent, args), torch.Generator().manual_seed(0)
    replay, atoms = filled_replay(), torch.linspace(-10, 10, args.num_atoms)
    for _ in range(30):
        ft.learner_step(agent, optimizers, replay, ConstantTeacher(), atoms, args, gen)
    assert agent.tradeoff_logit.item() == pytest.approx(0.5)


def test_alpha_is_held_during_the_warm_up_and_learned_after(tmp_path):
    held = run(tmp_path / "held", learn_alpha=True, alpha=0.5, alpha_warmup_steps=10_000)
    learned = run(tmp_path / "learned", learn_alpha=True, alpha=0.5, alpha_warmup_steps=0)
    assert all(e["alpha"] == pytest.approx(0.5) for e in held["evaluations"])
    assert learned["evaluations"][-1]["alpha"] != pytest.approx(0.5, abs=1e-3)


def test_threshold_is_the_teachers_sampled_action_return_and_the_actors_return_feeds_j(tmp_path):
    """c = 0.9 × the teacher's mean episode return with sampled actions (its own seeds, so an independent
    evaluation finds the same); J(α) reads the actors' return of the latest round, kept in the checkpoint."""
    results = run(tmp_path, learn_alpha=True, total_env_steps=2000)
    args = ft.Args(**{**TINY, "learn_alpha": True})
    teacher = ft.load_teacher(args, 5, 1, torch.device("cpu"))
    sampled = ft.evaluate(teacher, args, 0, torch.device("cpu"), stream=3, sample=True)
    assert results["return_threshold"] == pytest.approx(0.9 * sampled.mean())
    means = ft.evaluate(teacher, args, 0, torch.device("cpu"), stream=3)
    assert not np.allclose(sampled, means)  # sampled actions, not the mean's
    (name,) = os.listdir(tmp_path)
    checkpoint = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
    assert checkpoint["agent"]["policy_return"].item() > 0  # set by the rounds (0 before the first)


@pytest.fixture
def signal_handlers():
    """main() installs its stop handlers; the test process gets its own back afterwards."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def policy_outputs(policy, args, round_idx, device, *rest, **kwargs) -> np.ndarray:
    """Stands in for an evaluation without playing episodes: a sum of the policy's outputs at fixed states."""
    with torch.no_grad():
        mean, stddev = policy(torch.ones(args.eval_episodes, 5, device=device))
    return (mean + stddev).sum(-1).double().cpu().numpy()


def test_a_stop_mid_round_resumes_exactly(tmp_path, monkeypatch, signal_handlers, stop_after_learner_step):
    """SIGTERM after learner step 25, in the middle of the round with one more learner step owed for the last
    env step (two per env step): the checkpoint holds the round's actions so far and the 5 metrics since the
    log at step 20; --resume re-executes the actions and ends where an uninterrupted run ends, every log
    (the first after the stop included) averaging the same metrics."""
    kwargs = dict(
        TINY, num_envs=1, eval_episodes=1, total_env_steps=1000, learning_starts=950, replay_ratio=2.0
    )
    kwargs.update(learn_alpha=True, return_threshold=100.0, log_every=10, checkpoint_every=0)
    monkeypatch.setattr(ft, "load_teacher", lambda *args: ConstantTeacher())
    monkeypatch.setattr(ft, "evaluate", policy_outputs)
    stopper = stop_after_learner_step(ft, 25)
    whole = ft.main(ft.Args(**kwargs, output_dir=str(tmp_path / "whole")))
    whole_logs = dict(stopper.logged)
    stopper.armed = True
    with pytest.raises(SystemExit) as stopped:
        ft.main(ft.Args(**kwargs, output_dir=str(tmp_path / "stopped")))
    assert stopped.value.code == 128 + signal.SIGTERM
    (name,) = os.listdir(tmp_path / "stopped")
    path = tmp_path / "stopped" / name / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["state"]
    assert state["learner_steps"] == 25 and state["credit"] >= 1.0 and state["round"] == 0
    assert 950 < len(state["round_actions"]) < 1000 and len(checkpoint["metrics"]) == 5
    stopper.armed = False
    stopper.logged.clear()
    resumed = ft.main(ft.Args(resume=str(path)))
    assert 30 in stopper.logged and all(stopper.logged[step] == whole_logs[step] for step in stopper.logged)
    for key in ("evaluations", "final", "learner_steps", "env_steps"):
        assert resumed[key] == whole[key], key
