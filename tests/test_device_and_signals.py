"""The paths a run takes off the test suite's usual one: a GPU, a stop signal, a resume, a batch job's log.

There is no GPU here, so each test checks the device-independent rule a GPU run depends on: a restored state
lands on the device passed in (the `meta` device stands in for CUDA), the bfloat16 check asks a GPU for
native support, the signal handlers are a `main` call's own, a resume applies one override rule, and the
line printed in place of a progress bar reports one rate over the run (evaluations excluded)."""

import dataclasses
import importlib
import signal

import numpy as np
import pytest
import torch
from test_bf16 import OFFLINE, offline_setup, online_setup

SCRIPTS = [*OFFLINE, "dime_finetune", "dime_morl"]
ONLINE = ["dime_finetune", "dime_morl"]


def one_learner_step(script: str):
    """A tiny agent of `script`, its optimisers and generator, and the metrics of one learner step."""
    setup = online_setup if script in ONLINE else offline_setup
    module, args, agent, step = setup(script)
    optimizers = module.make_optimizers(agent, args)
    gen = torch.Generator().manual_seed(1)
    metrics = step(agent, optimizers, args, gen)
    return module, args, agent, optimizers, gen, metrics


class NoReplay:
    """A replay buffer that restores nothing (the restored metrics are under test)."""

    def load_state_dict(self, saved: dict) -> None:
        pass


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_restored_state_lands_on_the_runs_device(script):
    """A checkpoint is read onto the CPU; `restore` puts the metrics since the last log (saved by a stop
    between two logs) where the networks are, so the first log after a resume stacks tensors of one device."""
    module, args, agent, optimizers, gen, metrics = one_learner_step(script)
    ckpt = dict(agent=agent.state_dict(), rng=gen.get_state(), metrics=[metrics], replay={})
    ckpt["optimizers"] = {k: o.state_dict() for k, o in optimizers.items()}
    ckpt["state"] = dataclasses.asdict(module.TrainState(learner_steps=1))
    agent = agent.to("meta")
    parts = dict(agent=agent, optimizers=module.make_optimizers(agent, args), gen=gen)
    parts.update(atoms=torch.zeros(1, device="meta"), replay=NoReplay())
    fields = [f.name for f in dataclasses.fields(module.Learner) if f.name != "metrics"]
    learner = module.Learner(**{name: parts.get(name) for name in fields})
    module.restore(ckpt, learner)
    assert len(learner.metrics) == 1
    assert {v.device.type for m in learner.metrics for v in m.values()} == {"meta"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_bf16_on_a_gpu_that_only_emulates_it_falls_back_to_fp32_with_a_notice(script, monkeypatch, capsys):
    """torch.cuda.is_bf16_supported() counts emulation (V100, T4) as support unless asked not to: an emulated
    --bf16 is slower than fp32, so it is dropped with the CPU path's notice; an Ampere GPU keeps it."""
    module = importlib.import_module(script)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    device, args = module.check_device(module.Args(bf16=True, hidden_sizes=(8,)))
    assert device.type == "cuda" and not args.bf16
    assert "no native bfloat16 matmuls on this CUDA" in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert module.check_device(module.Args(bf16=True, hidden_sizes=(8,)))[1].bf16


def signal_handlers() -> dict:
    return {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}


@pytest.mark.parametrize("script", SCRIPTS)
def test_main_gives_the_callers_signal_handlers_back(script):
    """A caller that imports a script and calls `main` (a sweep, a notebook) keeps its own Ctrl-C: the
    handlers are the caller's again when main returns or exits, here through a flag error."""
    module = importlib.import_module(script)
    before = signal_handlers()
    with pytest.raises(SystemExit):
        module.main(module.Args(env_id="cartpole_swingup", batch_size=0))
    assert signal_handlers() == before


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_signal_after_the_training_loop_stops_at_once(script, tmp_path, monkeypatch, capsys):
    """During the loop a signal ends it after the learner step in progress; once the loop is over (the final
    evaluation, the results), a signal is no longer ignored: the run stops at once, keeping its checkpoint."""
    module = importlib.import_module(script)
    exits = []
    monkeypatch.setattr(module.os, "_exit", exits.append)
    with module.StopSignals() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop.handle
        stop.run = type("FakeRun", (), {"dir": str(tmp_path)})()
        stop.end_loop(lambda: pytest.fail("no stop signal: no checkpoint"), 10)
        stop.handle(signal.SIGTERM, None)
    assert exits == [128 + signal.SIGTERM]
    assert capsys.readouterr().err == f"SIGTERM: stopped at once; the last checkpoint in {tmp_path} is kept\n"


def resume_args(module, script: str, **flags):
    """Args of `script` for a --resume with `flags` (and a task the script knows)."""
    env_id = "cartpole_swingup" if script in ONLINE else "cheetah_run"
    return module.Args(env_id=env_id, resume="checkpoint.pt", **flags)


@pytest.mark.parametrize("script", SCRIPTS)
def test_one_resume_override_rule_in_every_script(script):
    """A flag typed with --resume counts as given even at its default: `--resume C --eval-every <default>`
    sets it back from the checkpoint's value. An untyped flag at its default keeps the checkpoint's. A given
    flag that a resume may not change must agree with the checkpoint."""
    module = importlib.import_module(script)
    default = resume_args(module, script)
    saved = dataclasses.asdict(dataclasses.replace(default, eval_every=default.eval_every * 2, resume=None))
    typed = frozenset({"--eval-every", "--resume"})
    assert module.resumed_args(default, typed, saved)["eval_every"] == default.eval_every
    assert module.resumed_args(default, frozenset({"--resume"}), saved)["eval_every"] == saved["eval_every"]
    with pytest.raises(SystemExit):
        module.resumed_args(resume_args(module, script, seed=7), frozenset({"--seed", "--resume"}), saved)


class FakeClock:
    """time.time() under the test's control."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("script", OFFLINE)
def test_the_line_printed_off_a_terminal_gives_the_runs_rate_and_eta(script, tmp_path, monkeypatch, capsys):
    """A 100 s evaluation at step 0, then 100 learner steps in 10 s: the line at step 100 reads 10 learner
    steps/s (the evaluation excluded), and its ETA is the 900 steps left at that rate plus the 2 evaluations
    left at 100 s each: 290 s, "5 min"."""
    module, args, agent, _, _, metrics = one_learner_step(script)
    args = dataclasses.replace(
        args, total_steps=1000, eval_every=500, eval_episodes=2, output_dir=str(tmp_path)
    )
    clock = FakeClock()
    monkeypatch.setattr(module.time, "time", clock)
    state = module.TrainState()
    run = module.Run(args, state)
    run.progress.disable = True
    shape = (len(args.eval_alphas), 2) if script == "dime_multi" else (2,)

    def evaluate(*_):
        clock.now += 100.0
        return np.zeros(shape), None

    monkeypatch.setattr(module, "evaluate", evaluate)
    monkeypatch.setattr(module, "critic_rank_correlation", lambda *_: 0.0)
    module.evaluate_and_log(agent, args, state, run, {}, None)
    clock.now += 10.0
    run.log(agent, [metrics], 100)
    run.writer.close()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step 100/")]
    assert lines == ["step 100/1000: 10.0 learner steps/s, ETA 5 min"]


@pytest.mark.parametrize("script", ONLINE)
def test_the_online_line_printed_off_a_terminal_gives_the_runs_rate_and_eta(
    script, tmp_path, monkeypatch, capsys
):
    """A 100 s evaluation, then 1000 env steps and 250 learner steps in 10 s: the line reads 25 learner
    steps/s, and its ETA is the 9000 env steps left at 100 per second plus the 4 evaluations (every 500
    learner steps) the 2250 learner steps left will make, at 100 s each: 490 s, "8 min"."""
    module, args, agent, _, _, metrics = one_learner_step(script)
    flags = dict(total_env_steps=10_000, eval_every=500, output_dir=str(tmp_path))
    args = dataclasses.replace(args, **flags)
    clock = FakeClock()
    monkeypatch.setattr(module.time, "time", clock)
    state = module.TrainState()
    if script == "dime_morl":
        # dime_morl's bar counts env steps on control tasks, learner steps on a bandit.
        run = module.Run(args, state, "env_steps", args.total_env_steps)
    else:
        run = module.Run(args, state)
    run.progress.disable = True
    clock.now += 100.0
    run.eval_seconds += 100.0
    run.evaluations += 1
    clock.now += 10.0
    state.learner_steps = 250
    state.env_steps = 1000
    run.log(agent, [metrics], state)
    run.writer.close()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("env step")]
    assert lines == ["env step 1000/10000, learner step 250: 25.0 learner steps/s, ETA 8 min"]
