"""Tests use tiny networks: one intra-op thread is faster than two for them and immune to a busy machine.

`script_runner` runs the top-level scripts as their own processes without paying for their imports each
time (tests/test_bad_inputs.py, tests/test_robustness.py); `stop_after_learner_step` stops an online run
in this process at a chosen learner step."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "disable")
torch.set_num_threads(1)


# ------------------------------------------------------------------------------ scripts as processes
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRELOAD = (  # everything a run imports on its way (torch.optim pulls in torch._dynamo on first use)
    "numpy torch torch._dynamo torch.export tyro tqdm h5py gymnasium shimmy dm_control.suite "
    "torch.utils.tensorboard matplotlib.pyplot"
)
SERVER = f"""
import json, os, runpy, sys, traceback
sys.path[0] = {ROOT!r}  # as `python script.py` from the repository root
for name in {PRELOAD!r}.split() + ["common.datasets"]:
    __import__(name)
try:
    import gymnasium_robotics  # noqa: F401  (prints a notice when imported)
except ImportError:
    pass
import dataclasses, tyro
tyro.cli(dataclasses.make_dataclass("Warm", [("x", int, 0)]), args=[])  # tyro's lazily imported parts
print(json.dumps({{"ready": True}}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "wait":
        pid, status = os.waitpid(request["pid"], 0)
        print(json.dumps({{"pid": pid, "returncode": os.waitstatus_to_exitcode(status)}}), flush=True)
        continue
    pid = os.fork()
    if pid:
        print(json.dumps({{"pid": pid}}), flush=True)
        continue
    os.chdir(request["cwd"])
    os.environ.update(request["env"])
    write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(os.open(request["stdout"], write), 1)
    os.dup2(os.open(request["stderr"], write), 2)
    sys.argv, code = request["argv"], 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:  # what the interpreter does with it
        code = e.code if isinstance(e.code, int) else e.code is not None
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    import atexit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
"""


class ScriptRunner:
    """Runs the top-level scripts as separate processes (`python script.py ARGS` from the repository root,
    MUJOCO_GL=disable, one thread), forked from an interpreter that already imported their dependencies:
    each run pays for its own work, not for 3-10 s of imports. A run executes the script file as __main__
    with its own argv, environment, stdout/stderr files and exit status (negative: killed by that signal)."""

    def __init__(self, log_dir: str):
        env = {**os.environ, "MUJOCO_GL": "disable", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
        self.server = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(os.path.join(log_dir, "server.log"), "w"),
            cwd=ROOT,
            env=env,
            text=True,
        )
        self.ready = False  # its imports overlap with the caller's work until the first request

    def _reply(self) -> dict:
        line = self.server.stdout.readline()
        assert line, "the script server died; see its server.log"
        return json.loads(line)

    def _ask(self, **request) -> dict:
        if not self.ready:
            assert self._reply() == {"ready": True}
            self.ready = True
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        return self._reply()

    def start(self, script: str, args: list[str], log_dir: str, env: dict | None = None) -> int:
        """Start `script.py args` (stdout, stderr: log_dir/stdout, log_dir/stderr); returns its pid."""
        paths = {k: os.path.join(log_dir, k) for k in ("stdout", "stderr")}
        argv = [os.path.join(ROOT, f"{script}.py"), *map(str, args)]
        return self._ask(op="start", argv=argv, cwd=ROOT, env=env or {}, **paths)["pid"]

    def wait(self, pid: int) -> int:
        """The exit status of a started run, once it ends."""
        return self._ask(op="wait", pid=pid)["returncode"]

    def run(self, script: str, args: list[str], log_dir: str, env: dict | None = None) -> tuple[int, str]:
        """Run to the end; returns the exit status and stderr."""
        returncode = self.wait(self.start(script, args, log_dir, env))
        return returncode, open(os.path.join(log_dir, "stderr")).read()

    def run_many(self, jobs: list[tuple], parallel: int = 2) -> list[tuple[int, str]]:
        """`run` every (script, args, log_dir, env) job, `parallel` at a time; results in job order."""
        results, running, queue = [None] * len(jobs), [], list(enumerate(jobs))
        while queue or running:
            while queue and len(running) < parallel:
                index, job = queue.pop(0)
                running.append((index, self.start(*job)))
            index, pid = running.pop(0)
            results[index] = self.wait(pid), open(os.path.join(jobs[index][2], "stderr")).read()
        return results

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)


@pytest.fixture(scope="session")
def script_runner(tmp_path_factory):
    runner = ScriptRunner(str(tmp_path_factory.mktemp("script_runner")))
    yield runner
    runner.close()


# ------------------------------------------------------------------------------ online stop mid-round
class StopAfterLearnerStep:
    """For an online script run in this process: records every `Run.log`'s averages by learner step, and,
    while armed, sends SIGTERM to the process after learner step `step`, where the script's own handler
    stops the run at the learner step it is in (tests/test_dime_finetune.py, tests/test_dime_morl_runs.py)."""

    def __init__(self, module, monkeypatch, step: int):
        self.logged = {}
        self.armed = False
        real_log = module.Run.log
        real_learn = module.learn

        def record(run, agent, metrics, state):
            means = {k: torch.stack([m[k] for m in metrics]).mean().item() for k in metrics[0]}
            self.logged[state.learner_steps] = means
            real_log(run, agent, metrics, state)

        def learn_then_stop(learner, args, state, run):
            real_learn(learner, args, state, run)
            if self.armed and state.learner_steps == step:
                os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setattr(module.Run, "log", record)
        monkeypatch.setattr(module, "learn", learn_then_stop)


@pytest.fixture
def stop_after_learner_step(monkeypatch):
    """StopAfterLearnerStep(module, step), unarmed, undone after the test."""
    return lambda module, step: StopAfterLearnerStep(module, monkeypatch, step)
