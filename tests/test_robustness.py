"""Interrupted and diverging runs of every script, on the CPU:

- SIGKILL at a random point after a checkpoint, then `--resume`: the same results.json as an uninterrupted
  run (timing keys aside); the checkpoint left behind always loads;
- SIGINT or SIGTERM after a log line (online: mid-round): a checkpoint of that learner step, one line with the
  resume command, and the resumed run's results.json equals an uninterrupted run's;
- a checkpoint of a large, young replay buffer is the size of its filled rows;
- a crash while a checkpoint is being written leaves the previous checkpoint.pt in place, byte for byte;
- a NaN loss stops training with one "error:" line and keeps the last good checkpoint unchanged;
- the same seed gives the same results.json.
The kill point is drawn from a seeded RNG and changes nothing that is asserted.
"""

import glob
import hashlib
import importlib
import io
import json
import os
import random
import re
import signal
import time

import h5py
import numpy as np
import pytest
import torch
import tyro

OFFLINE = ("dime_bc", "dime_awbc", "crr_ls", "dime_multi")
SCRIPTS = (*OFFLINE, "dime_finetune", "dime_morl")
TINY = "--env-id cartpole_swingup --hidden-sizes 8 --batch-size 4 --num-samples 2 --eval-episodes 1".split()
TRADEOFF = {"dime_multi": ["--eval-alphas", "0.3", "0.8"]}  # the other offline scripts take --alpha
ONLINE = "--num-envs 1 --learning-starts 500 --replay-ratio 0.04 --buffer-size 5000 --target-update-period 10"
# Schedules: checkpoints every 10 learner steps (offline) or every round of 1000 env steps (online).
KILL = {"offline": "--total-steps 200 --checkpoint-every 10 --eval-every 100 --log-every 10"}
KILL["online"] = f"{ONLINE} --total-env-steps 3000 --checkpoint-every 1 --eval-every 40 --log-every 10"
SHORT = {"offline": "--total-steps 20 --checkpoint-every 10 --eval-every 20 --log-every 5"}
SHORT["online"] = f"{ONLINE} --total-env-steps 2000 --checkpoint-every 1 --eval-every 40 --log-every 10"
MAX_KILL_DELAY_S = 0.6  # after the first checkpoint; a run has well over a second left then
TIMING_KEYS = ("wall_time_s", "learner_steps_per_second")
RUN_ARGS = ("output_dir", "resume")  # where a run was written and whether it resumed: not results


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """Three 100-step episodes of random cartpole_swingup-sized transitions (5-dim states, 1 action)."""
    rng = np.random.default_rng(0)
    path = str(tmp_path_factory.mktemp("data") / "cartpole.hdf5")
    timeouts = np.zeros(300, bool)
    timeouts[99::100] = True
    with h5py.File(path, "w") as h5:
        h5["observations"] = rng.normal(size=(300, 5)).astype(np.float32)
        h5["actions"] = rng.uniform(-1, 1, (300, 1)).astype(np.float32)
        h5["rewards"] = rng.uniform(0, 1, 300).astype(np.float32)
        h5["terminals"], h5["timeouts"] = np.zeros(300, bool), timeouts
    return path


def flags(script: str, dataset: str, schedule: dict, extra: str = "") -> list[str]:
    """Command-line flags of a tiny cartpole_swingup run on `schedule` (offline: on `dataset`)."""
    if script in OFFLINE:
        data = ["--dataset", dataset, *TRADEOFF.get(script, ["--alpha", "0.5"])]
        return [*TINY, *data, *schedule["offline"].split(), *extra.split()]
    return [*TINY, *schedule["online"].split(), *extra.split()]


def results_of(output_dir) -> dict:
    """results.json of the one run directory under output_dir."""
    (path,) = glob.glob(os.path.join(str(output_dir), "*", "results.json"))
    return json.load(open(path))


def comparable(results: dict) -> dict:
    """results.json without wall-clock timing and without the run's own directory and --resume path."""
    out = {k: v for k, v in results.items() if k not in TIMING_KEYS}
    out["args"] = {k: v for k, v in results["args"].items() if k not in RUN_ARGS}
    return out


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def logs(tmp_path, name: str) -> str:
    """A fresh directory for a process's stdout and stderr files."""
    path = tmp_path / "logs" / name
    os.makedirs(path)
    return str(path)


def wait_for(pattern: str, timeout_s: float = 300.0) -> str:
    """The first path matching `pattern`, polled every 10 ms."""
    deadline = time.monotonic() + timeout_s
    found = glob.glob(pattern)
    while not found:
        assert time.monotonic() < deadline, f"nothing matched {pattern} in {timeout_s} s"
        time.sleep(0.01)
        found = glob.glob(pattern)
    return found[0]


def wait_for_log(stdout: str, first_step: int, timeout_s: float = 300.0) -> int:
    """The learner step of the first progress line ("step N: ... steps/s" or "step N/T: ...") at or past
    `first_step` in a run's stdout, polled every 10 ms."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = open(stdout).read() if os.path.exists(stdout) else ""
        steps = [int(s) for s in re.findall(r"step (\d+)\S*: .*steps/s", text)]
        reached = [s for s in steps if s >= first_step]
        if reached:
            return reached[0]
        assert time.monotonic() < deadline, f"no log of learner step {first_step} in {timeout_s} s"
        time.sleep(0.01)


# ------------------------------------------------------------------------------------ 2. kill, resume
@pytest.mark.parametrize("script", SCRIPTS)
def test_sigkill_after_a_checkpoint_then_resume_equals_an_uninterrupted_run(
    script, dataset, tmp_path, script_runner
):
    """Both runs start together; one is killed U(0, 0.6 s) after its first checkpoint appears, then resumed
    from whatever checkpoint.pt it left: a complete one, whichever learner step it holds."""
    command = flags(script, dataset, KILL)
    whole = script_runner.start(
        script, [*command, "--output-dir", tmp_path / "whole"], logs(tmp_path, "whole")
    )
    killed_dir = tmp_path / "killed"
    killed = script_runner.start(script, [*command, "--output-dir", killed_dir], logs(tmp_path, "killed"))
    checkpoint = wait_for(os.path.join(killed_dir, "*", "checkpoint.pt"))
    time.sleep(random.Random(f"kill {script}").uniform(0.0, MAX_KILL_DELAY_S))
    os.kill(killed, signal.SIGKILL)
    assert script_runner.wait(killed) == -signal.SIGKILL, "the run ended before the kill: lengthen it"
    assert not os.path.exists(os.path.join(os.path.dirname(checkpoint), "results.json"))
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)  # never half a file
    assert saved["state"]["learner_steps"] > 0
    returncode, stderr = script_runner.run(script, ["--resume", checkpoint], logs(tmp_path, "resumed"))
    assert returncode == 0, stderr
    assert script_runner.wait(whole) == 0, open(tmp_path / "logs" / "whole" / "stderr").read()
    resumed, uninterrupted = results_of(killed_dir), results_of(tmp_path / "whole")
    assert resumed["args"]["resume"] == checkpoint and uninterrupted["args"]["resume"] is None
    assert comparable(resumed) == comparable(uninterrupted)


# Stopped by SIGINT or SIGTERM with no periodic checkpoints: the stop writes its own. Offline: after the first
# log (learner step 7). Online: after the log of learner step 21, early in round 1 (round 0 holds learner
# steps 1-20, round 1 steps 21-60 over 1000 env steps), so the stop lands mid-round.
STOP = {"offline": "--total-steps 3000 --checkpoint-every 0 --eval-every 1000 --log-every 7"}
STOP["online"] = f"{ONLINE} --total-env-steps 3000 --checkpoint-every 0 --eval-every 40 --log-every 7"
STOP_AFTER_LOG = {"offline": 7, "online": 21}


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_stop_signal_checkpoints_and_resume_equals_an_uninterrupted_run(
    script, dataset, tmp_path, script_runner
):
    """Ctrl-C (SIGINT) or `kill` (SIGTERM) 0-0.1 s after a log line, wherever the run is then (a learner
    step, an env step): exit code 128 + signal, one line on stderr naming the learner step and the --resume
    command, a checkpoint of that step (online: in the middle of a round, its actions so far kept), and
    resuming it ends exactly where an uninterrupted run ends."""
    rng = random.Random(f"stop {script}")
    signum = rng.choice([signal.SIGINT, signal.SIGTERM])
    kind = "offline" if script in OFFLINE else "online"
    command, stopped_dir = flags(script, dataset, STOP), tmp_path / "stopped"
    whole = script_runner.start(
        script, [*command, "--output-dir", tmp_path / "whole"], logs(tmp_path, "whole")
    )
    log = logs(tmp_path, "stopped")
    stopped = script_runner.start(script, [*command, "--output-dir", stopped_dir], log)
    logged_step = wait_for_log(os.path.join(log, "stdout"), STOP_AFTER_LOG[kind])
    time.sleep(rng.uniform(0.0, 0.1))
    os.kill(stopped, signum)
    assert script_runner.wait(stopped) == 128 + signum, "the run ended before the signal: lengthen it"
    err = open(os.path.join(log, "stderr")).read().strip().splitlines()
    assert len(err) == 1 and signal.Signals(signum).name in err[0], err
    checkpoint = err[0].split(" --resume ")[1]
    assert checkpoint == wait_for(os.path.join(stopped_dir, "*", "checkpoint.pt"))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state"]
    assert f"stopped at learner step {state['learner_steps']};" in err[0]
    assert state["learner_steps"] >= logged_step > 0
    if kind == "online":
        assert state["round_actions"] and state["env_steps"] % 1000, "the stop fell between rounds"
    returncode, stderr = script_runner.run(script, ["--resume", checkpoint], logs(tmp_path, "resumed"))
    assert returncode == 0, stderr
    assert script_runner.wait(whole) == 0, open(tmp_path / "logs" / "whole" / "stderr").read()
    assert comparable(results_of(stopped_dir)) == comparable(results_of(tmp_path / "whole"))


@pytest.mark.parametrize("script", ["dime_finetune", "dime_morl"])
def test_a_checkpoint_of_a_young_replay_holds_only_its_filled_rows(script, tmp_path):
    """10 filled rows of a 1M-transition buffer: the saved replay is the size of those rows plus the file
    format's few kB, not of the whole buffer (a slice alone would save its whole storage)."""
    module = importlib.import_module(script)
    objectives = [2] if script == "dime_morl" else []
    replay = module.Replay(1_000_000, 1, 3, 1, *objectives, "cpu")
    row = {k: v[0] for k, v in replay.data.items()}
    for _ in range(10):
        replay.add(**row)
    torch.save({"replay": replay.state_dict()}, tmp_path / "checkpoint.pt")
    filled = sum(v[:10].nbytes for v in replay.data.values())
    assert os.path.getsize(tmp_path / "checkpoint.pt") < filled + 4096


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_stop_signal_before_training_exits_at_once_in_one_line(script, capsys):
    module = importlib.import_module(script)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with module.StopSignals() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop.handle
        with pytest.raises(SystemExit) as exit_info:
            stop.handle(signal.SIGTERM, None)
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "SIGTERM: stopped at once; nothing to resume\n"


class SimulatedCrash(Exception):
    """Raised by torch.save halfway through writing a checkpoint."""


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(script, dataset, tmp_path, monkeypatch):
    """The second checkpoint's writer dies after half of its bytes: checkpoint.pt is still the first one,
    byte for byte, and the script's own loader accepts it for --resume."""
    module = importlib.import_module(script)
    real_save, targets, first_step = torch.save, [], []

    def save_then_crash(obj, f, *args, **kwargs):
        if not str(f).endswith("checkpoint.pt"):
            return real_save(obj, f, *args, **kwargs)
        targets.append(str(f))
        if len(targets) == 1:
            first_step.append(obj["state"]["learner_steps"])
            return real_save(obj, f, *args, **kwargs)
        kept = digest(os.path.join(os.path.dirname(str(f)), "checkpoint.pt"))
        buffer = io.BytesIO()
        real_save(obj, buffer)
        open(f, "wb").write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise SimulatedCrash(kept)

    monkeypatch.setattr(torch, "save", save_then_crash)
    args = tyro.cli(module.Args, args=[*flags(script, dataset, SHORT), "--output-dir", str(tmp_path)])
    with pytest.raises(SimulatedCrash) as crash:
        module.main(args)
    half, final = targets[-1], os.path.join(os.path.dirname(targets[-1]), "checkpoint.pt")
    assert half != final and os.path.getsize(half) > 0  # the half file lies beside the checkpoint
    assert digest(final) == crash.value.args[0]
    state = module.load_checkpoint(module.Args(resume=final))["state"]
    assert 0 < state["learner_steps"] == first_step[0]  # the first checkpoint's step


# ------------------------------------------------------------------------------------------ 3. NaN guard
def poison_policy_loss(module, monkeypatch, after: int) -> None:
    """From the (after + 1)-th learner step on, the policy loss is NaN."""
    real, calls = module.policy_loss, []

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) > after else loss), stats

    monkeypatch.setattr(module, "policy_loss", poisoned)


def record_checkpoints(module, monkeypatch) -> list:
    """(learner step, sha256) of checkpoint.pt after every successful save."""
    real, saved = module.save_checkpoint, []

    def recorded(run, *args):
        real(run, *args)
        path = os.path.join(getattr(run, "dir", run), "checkpoint.pt")  # a Run or its directory
        saved.append((torch.load(path, weights_only=True)["state"]["learner_steps"], digest(path)))

    monkeypatch.setattr(module, "save_checkpoint", recorded)
    return saved


def assert_diverged(module, args, capsys, saved: list, clean_steps: int) -> None:
    """main(args) exits 2 with one "diverged" line; checkpoint.pt is the last one saved, bytes unchanged,
    from a learner step before the NaN, with finite parameters."""
    with pytest.raises(SystemExit) as exit_info:
        module.main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "diverged" in err and "last good checkpoint is kept" in err, err
    (path,) = glob.glob(os.path.join(args.output_dir, "*", "checkpoint.pt"))
    assert saved and digest(path) == saved[-1][1]  # the last good one, unchanged
    checkpoint = torch.load(path, weights_only=True)
    assert 0 < checkpoint["state"]["learner_steps"] <= clean_steps
    assert all(torch.isfinite(value).all() for value in checkpoint["agent"].values())


# Offline: checkpoints at steps 3, 6, 9, NaN from step 7: the checkpoint at step 9 finds NaN parameters
# (before the log at step 10).
# Online: 20 clean learner steps in round 0, a checkpoint after it, NaN from the 30th, logged at step 30.
NAN = {"offline": "--total-steps 30 --checkpoint-every 3 --eval-every 15 --log-every 5"}
NAN["online"] = SHORT["online"]
CLEAN_STEPS = {"offline": 6, "online": 29}


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(
    script, dataset, tmp_path, monkeypatch, capsys
):
    """Offline: the NaN parameters are found by the next checkpoint; online: by the next log."""
    module = importlib.import_module(script)
    kind = "offline" if script in OFFLINE else "online"
    poison_policy_loss(module, monkeypatch, after=CLEAN_STEPS[kind])
    saved = record_checkpoints(module, monkeypatch)
    args = tyro.cli(module.Args, args=[*flags(script, dataset, NAN), "--output-dir", str(tmp_path)])
    assert_diverged(module, args, capsys, saved, CLEAN_STEPS[kind])


# Logs far apart, so NaN parameters meet the environment before any log does. Offline and on the bandit:
# checkpoint at step 5, NaN from step 8, evaluation at step 10. Online: NaN from learner step 26 (round 1,
# after the checkpoint that follows round 0), then the actors' next action.
NAN_UNLOGGED = {"offline": "--total-steps 30 --checkpoint-every 5 --eval-every 10 --log-every 1000"}
NAN_UNLOGGED["online"] = SHORT["online"].replace("--log-every 10", "--log-every 1000")
UNLOGGED_CASES = [pytest.param(s, "evaluation", 7, id=s) for s in OFFLINE]
UNLOGGED_CASES += [
    pytest.param("dime_finetune", "actors", 25, id="dime_finetune"),
    pytest.param("dime_morl", "actors", 25, id="dime_morl-control"),
    pytest.param("dime_morl", "evaluation", 7, id="dime_morl-bandit"),
]


@pytest.mark.parametrize("script,reached_by,clean", UNLOGGED_CASES)
def test_a_nan_policy_never_reaches_the_environment(
    script, reached_by, clean, dataset, tmp_path, monkeypatch, capsys
):
    """Stopped with the one-line message before an evaluation or an actor steps the env (offline scripts:
    expected to fail until their evaluate_and_log checks the policy as dime_finetune's and dime_morl's do)."""
    module = importlib.import_module(script)
    poison_policy_loss(module, monkeypatch, after=clean)
    saved = record_checkpoints(module, monkeypatch)
    if script == "dime_morl" and reached_by == "evaluation":
        command = [*TINY, *NAN_UNLOGGED["offline"].split(), "--env-id", "schaffer"]
    else:
        command = flags(script, dataset, NAN_UNLOGGED)
    args = tyro.cli(module.Args, args=[*command, "--output-dir", str(tmp_path)])
    assert_diverged(module, args, capsys, saved, clean)


# ---------------------------------------------------------------------------------------- 4. determinism
@pytest.mark.parametrize("script", SCRIPTS)
def test_the_same_seed_gives_the_same_results(script, dataset, tmp_path, script_runner):
    """Two processes, same flags and seed, same CPU: identical results.json apart from timing."""
    jobs = [
        (script, [*flags(script, dataset, SHORT), "--output-dir", tmp_path / run], logs(tmp_path, run))
        for run in ("a", "b")
    ]
    for returncode, stderr in script_runner.run_many(jobs):
        assert returncode == 0, stderr
    a, b = results_of(tmp_path / "a"), results_of(tmp_path / "b")
    assert a["learner_steps"] > 0 and len(a["evaluations"]) >= 2
    assert comparable(a) == comparable(b)
