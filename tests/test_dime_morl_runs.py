"""End-to-end runs of dime_morl.py: every method on the bandits and a control task, exact resume, outputs,
and bad input (one clear line, non-zero exit, nothing on disk changed)."""

import dataclasses
import glob
import hashlib
import json
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

import dime_morl as m

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(hidden_sizes=(16, 16), batch_size=8, num_samples=4, log_every=5)
TINY_CONTROL = dict(
    TINY,
    env_id="cartpole_swingup",
    num_envs=1,
    learning_starts=200,
    replay_ratio=0.05,
    buffer_size=5000,
    eval_episodes=1,
    eval_every=40,
    target_update_period=10,
    alpha=0.2,
)


def run(tmp_path, **kwargs) -> dict:
    args = m.Args(output_dir=str(tmp_path), **kwargs)
    return m.main(args)


def run_dir_of(tmp_path) -> str:
    (path,) = glob.glob(os.path.join(str(tmp_path), "*", "results.json"))
    return os.path.dirname(path)


def strip_times(results: dict) -> dict:
    out = {k: v for k, v in results.items() if k not in ("wall_time_s", "learner_steps_per_second", "args")}
    return json.loads(json.dumps(out))


def test_bandit_defaults_reach_the_front(tmp_path):
    """With no flag but the trade-off, Fonseca-Fleming runs converge (Fig. 1a): LS at α = 0.1 and α = 0.9 ends
    at the two ends of the concave front (actions ±1), DiME at α = 0.5 inside it."""
    actions = {}
    for method, alpha in (("ls", 0.1), ("ls", 0.9), ("dime", 0.5)):
        args = m.Args(
            env_id="fonseca_fleming",
            method=method,
            alpha=alpha,
            output_dir=str(tmp_path / method / str(alpha)),
        )
        assert (args.hidden_sizes, args.batch_size, args.target_update_period) == ((64, 64), 16, 10)
        r1, _ = m.main(args)["final"]["mean"]  # rewards -f1, -f2 of the mean action
        actions[method, alpha] = 1 - np.sqrt(-np.log(1 + r1))  # f1 = 1 - exp(-(a - 1)²), a ≤ 1 branch
    assert actions["ls", 0.1] > 0.9 and actions["ls", 0.9] < -0.9, actions
    assert -0.5 < actions["dime", 0.5] < 0.5, actions


def test_control_defaults_are_the_papers():
    args = m.Args(env_id="cartpole_swingup")
    assert (args.hidden_sizes, args.batch_size, args.target_update_period, args.epsilon_mean) == (
        (1024, 1024, 1024, 1024, 1024, 512),
        512,
        200,
        1e-3,
    )
    assert (
        m.Args(env_id="cartpole_swingup", batch_size=64, epsilon_mean=0.5).epsilon_mean == 0.5
    )  # typed wins


@pytest.mark.parametrize("method", ["dime", "ls", "mompo"])
@pytest.mark.parametrize("env_id", ["schaffer", "fonseca_fleming"])
def test_bandit_runs_and_moves_toward_the_weighted_objective(tmp_path, method, env_id):
    results = run(
        tmp_path,
        env_id=env_id,
        method=method,
        alpha=0.9,
        total_steps=300,
        eval_every=100,
        target_update_period=5,
        epsilon_mean=0.05,
        **TINY,
    )
    assert [e["step"] for e in results["evaluations"]] == [0, 100, 200, 300]
    first, last = results["evaluations"][0]["mean"], results["final"]["mean"]
    # The policy starts at a ≈ 0; α = 0.9 weighs objective 2 (optimum a = 2, resp. -1): it must improve
    # and objective 1 (optimum a = 0, resp. 1) must get worse.
    assert last[1] > first[1] + 1e-3 and last[0] < first[0] - 1e-3
    assert results["hypervolume"] > 0 and results["hv_reference"] in ([-4.0, -4.0], [-1.0, -1.0])
    assert os.path.exists(os.path.join(run_dir_of(tmp_path), "pareto.png"))
    last = results["evaluations"][-1]
    assert last["env_steps"] == 0 and isinstance(last["mean_action"], float)  # the action the mean plays
    documented = open(os.path.join(os.path.dirname(__file__), "..", "docs", "dime_morl.md")).read()
    for key in [*results, *last]:  # docs/dime_morl.md lists every results.json key
        assert f"`{key}`" in documented, f"results.json key {key} is not in docs/dime_morl.md"


def test_bandit_multi_evaluates_every_alpha(tmp_path):
    results = run(
        tmp_path,
        env_id="fonseca_fleming",
        multi=True,
        eval_alphas=[0.1, 0.5, 0.9],
        total_steps=20,
        eval_every=10,
        **TINY,
    )
    assert results["alpha"] is None
    assert [f["alpha"] for f in results["final"]] == [0.1, 0.5, 0.9]
    assert len(results["evaluations"]) == 3 * 3  # steps 0, 10, 20
    assert 1 <= len(results["pareto"]) <= 3


@pytest.mark.parametrize("method,multi", [("dime", False), ("ls", True), ("mompo", False)])
def test_control_task_trains_and_writes_outputs(tmp_path, method, multi):
    replay_path = str(tmp_path / "replay.hdf5")
    results = run(
        tmp_path,
        method=method,
        multi=multi,
        total_env_steps=2000,
        save_model=True,
        save_replay=replay_path,
        action_penalization=method == "mompo",
        **TINY_CONTROL,
    )
    run_dir = run_dir_of(tmp_path)
    assert results["env_steps"] == 2000
    assert results["learner_steps"] == int((2000 - 200) * 0.05)  # replay ratio honoured after learning starts
    evaluation = results["evaluations"][-1]
    assert len(evaluation["returns"]) == 1 and len(evaluation["returns"][0]) == 2
    assert evaluation["returns"][0][1] < 0  # the energy cost is a negative reward
    # The exported policy loads without this project's classes and matches the trained one.
    policy = torch.export.load(os.path.join(run_dir, "policy.pt2")).module()
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)
    net = m.Policy(5 + 2 * multi, 1, TINY["hidden_sizes"])
    net.load_state_dict({k[len("policy.") :]: v for k, v in ckpt["agent"].items() if k.startswith("policy.")})
    x = torch.randn(3, 5 + 2 * multi)
    assert torch.allclose(policy(x)[0], net(x)[0], atol=1e-6)
    with h5py.File(replay_path) as f:
        assert set(f) == {"observations", "actions", "rewards", "next_observations", "terminals", "timeouts"}
        assert f["observations"].shape == (2000, 5) and f["rewards"].shape == (2000,)
        timeouts = f["timeouts"][:]
        assert timeouts[999] and timeouts[1999] and timeouts.sum() == 2  # two 1000-step episodes
        assert np.allclose(f["observations"][1:1000], f["next_observations"][:999])


@pytest.mark.parametrize(
    "counter,kwargs",
    [
        ("total_env_steps", dict(TINY_CONTROL, checkpoint_every=1)),  # checkpoints fall on round boundaries
        ("total_steps", dict(TINY, env_id="schaffer", alpha=0.3, eval_every=10, checkpoint_every=7)),
    ],
    ids=["control", "bandit"],
)
def test_resume_continues_exactly(tmp_path, counter, kwargs):
    """Stop early, resume with a larger budget: the same results.json as one uninterrupted run."""
    short, full_length = (2000, 3000) if counter == "total_env_steps" else (14, 30)
    full = run(tmp_path / "full", **{counter: full_length}, **kwargs)
    run(tmp_path / "part", **{counter: short}, **kwargs)
    ckpt = os.path.join(run_dir_of(tmp_path / "part"), "checkpoint.pt")
    resumed = m.main(m.Args(resume=ckpt, **{counter: full_length}))
    assert strip_times(resumed) == strip_times(full)


def test_same_seed_same_results(tmp_path):
    kwargs = dict(TINY, env_id="fonseca_fleming", total_steps=20, eval_every=10)
    assert strip_times(run(tmp_path / "a", **kwargs)) == strip_times(run(tmp_path / "b", **kwargs))


def cli(*flags, cwd=ROOT, env=None):
    env = {**os.environ, "MUJOCO_GL": "disable", **(env or {})}
    command = [sys.executable, os.path.join(ROOT, "dime_morl.py"), *flags]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_cli_smoke(tmp_path):
    proc = cli(
        "--env-id",
        "schaffer",
        "--total-steps",
        "5",
        "--eval-every",
        "5",
        "--hidden-sizes",
        "8",
        "8",
        "--batch-size",
        "4",
        "--output-dir",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    results = json.load(open(os.path.join(run_dir_of(tmp_path), "results.json")))
    assert results["algo"] == "dime_morl" and results["learner_steps"] == 5
    args = json.load(open(os.path.join(run_dir_of(tmp_path), "args.json")))
    assert args == dataclasses.asdict(m.Args(**{**json.loads(json.dumps(args))}))  # args.json round-trips


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def assert_one_line_error(proc, *words):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--env-id", "cheetah_walk"], ["--env-id", "cheetah_walk"]),
        (["--env-id", "schaffer", "--alpha", "1.5"], ["--alpha", "1.5"]),
        (["--env-id", "cartpole_swingup", "--method", "ls", "--alpha", "-0.1"], ["--alpha"]),
        (["--env-id", "schaffer", "--multi", "--method", "mompo"], ["--multi"]),
        (["--env-id", "schaffer", "--batch-size", "0"], ["--batch-size"]),
    ],
)
def test_bad_flags(tmp_path, flags, words):
    proc = cli(*flags, "--output-dir", str(tmp_path))
    assert_one_line_error(proc, *words)
    assert os.listdir(tmp_path) == []  # no run directory was made


def test_bad_resume_inputs_leave_files_untouched(tmp_path):
    not_ckpt = tmp_path / "notes.pt"
    not_ckpt.write_text("hello")
    notes_digest = digest(not_ckpt)
    assert_one_line_error(cli("--resume", str(not_ckpt)), "--resume")
    other = tmp_path / "other.pt"
    torch.save({"script": "dime_bc", "args": {}}, other)
    assert_one_line_error(cli("--resume", str(other)), "dime_morl.py")
    run(tmp_path / "r", env_id="schaffer", total_steps=4, eval_every=4, checkpoint_every=2, **TINY)
    ckpt = os.path.join(run_dir_of(tmp_path / "r"), "checkpoint.pt")
    before = digest(ckpt)
    assert_one_line_error(cli("--resume", ckpt, "--env-id", "cartpole_swingup"), "--env-id", "schaffer")
    assert_one_line_error(cli("--resume", ckpt, "--hidden-sizes", "8", "8"), "--hidden-sizes")
    assert digest(ckpt) == before and digest(not_ckpt) == notes_digest


def test_existing_save_replay_path_is_refused(tmp_path):
    existing = tmp_path / "data.hdf5"
    existing.write_bytes(b"precious")
    proc = cli(
        "--env-id", "cartpole_swingup", "--save-replay", str(existing), "--output-dir", str(tmp_path / "o")
    )
    assert_one_line_error(proc, "--save-replay")
    assert existing.read_bytes() == b"precious"


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = cli("--env-id", "schaffer", "--output-dir", str(blocker / "sub"))
    assert_one_line_error(proc, "--output-dir")


def test_nan_guard_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    original = m.bandit_rewards
    calls = {"n": 0}

    def poisoned(env_id, actions):
        calls["n"] += 1
        out = original(env_id, actions)
        return out * float("nan") if calls["n"] > 12 else out

    monkeypatch.setattr(m, "bandit_rewards", poisoned)
    with pytest.raises(SystemExit) as exc:
        run(
            tmp_path,
            env_id="schaffer",
            total_steps=40,
            eval_every=100,
            checkpoint_every=5,
            **dict(TINY, log_every=5),
        )
    assert exc.value.code != 0
    assert "diverged" in capsys.readouterr().err
    ckpt = torch.load(glob.glob(str(tmp_path / "*" / "checkpoint.pt"))[0], weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["agent"].values())


def rendering_available() -> bool:
    probe = "import dm_control.mujoco as m; m.Physics.from_xml_string('<mujoco/>').render(8, 8)"
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, env={**os.environ, "MUJOCO_GL": "egl"}
    )
    return proc.returncode == 0


@pytest.mark.skipif(not rendering_available(), reason="needs EGL rendering")
def test_capture_video_writes_a_gif_per_evaluation(tmp_path):
    proc = cli(
        "--env-id",
        "cartpole_swingup",
        "--num-envs",
        "1",
        "--total-env-steps",
        "1000",
        "--learning-starts",
        "500",
        "--hidden-sizes",
        "8",
        "8",
        "--batch-size",
        "4",
        "--num-samples",
        "2",
        "--eval-episodes",
        "1",
        "--capture-video",
        "--output-dir",
        str(tmp_path),
        env={"MUJOCO_GL": "egl"},
    )
    assert proc.returncode == 0, proc.stderr
    videos = sorted(os.listdir(os.path.join(run_dir_of(tmp_path), "videos")))
    assert len(videos) == 2 and all(v.endswith(".gif") for v in videos)  # step 0 and the final evaluation


def test_compile_gives_the_same_learning_signal(tmp_path):
    kwargs = dict(TINY, env_id="schaffer", alpha=0.7, total_steps=20, eval_every=20)
    eager = run(tmp_path / "eager", **kwargs)
    compiled = run(tmp_path / "compiled", compile=True, **kwargs)
    assert np.allclose(eager["final"]["mean"], compiled["final"]["mean"], atol=1e-4)


@pytest.fixture
def signal_handlers():
    """main() installs its stop handlers; the test process gets its own back afterwards."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def policy_outputs(agent, args, alpha, round_idx, device, *rest, **kwargs) -> np.ndarray:
    """Stands in for an evaluation without playing episodes: the policy's outputs at fixed states, [1, K]."""
    with torch.no_grad():
        mean, stddev = agent.policy(torch.ones(1, agent.policy.torso[0].in_features, device=device))
    return torch.stack([mean.sum(), stddev.sum()])[None].double().cpu().numpy()


def test_a_stop_mid_round_resumes_exactly(tmp_path, monkeypatch, signal_handlers, stop_after_learner_step):
    """--multi (the round's trade-offs are drawn from the learner's RNG): SIGTERM after learner step 25, mid-
    episode with one more learner step owed for the last env step (two per env step). The checkpoint holds
    the round's trade-offs, its actions so far and the metrics since the log at step 20; --resume
    re-executes the actions and ends where an uninterrupted run ends, every log averaging the same metrics."""
    kwargs = dict(TINY_CONTROL, multi=True, eval_alphas=[0.5], total_env_steps=1000, learning_starts=950)
    kwargs.update(replay_ratio=2.0, log_every=10, checkpoint_every=0)
    monkeypatch.setattr(m, "evaluate", policy_outputs)
    stopper = stop_after_learner_step(m, 25)
    whole = run(tmp_path / "whole", **kwargs)
    whole_logs = dict(stopper.logged)
    stopper.armed = True
    with pytest.raises(SystemExit) as stopped:
        run(tmp_path / "stopped", **kwargs)
    assert stopped.value.code == 128 + signal.SIGTERM
    path = glob.glob(os.path.join(str(tmp_path / "stopped"), "*", "checkpoint.pt"))[0]
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["state"]
    assert state["learner_steps"] == 25 and state["credit"] >= 1.0 and len(state["round_alphas"]) == 1
    assert 950 < len(state["round_actions"]) < 1000 and len(checkpoint["metrics"]) == 5
    stopper.armed = False
    stopper.logged.clear()
    resumed = m.main(m.Args(resume=path))
    assert 30 in stopper.logged and all(stopper.logged[step] == whole_logs[step] for step in stopper.logged)
    assert strip_times(resumed) == strip_times(whole)
