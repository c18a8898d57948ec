"""Check the six scripts on a GPU in one command: short runs in fp32 and --bf16, a SIGINT stop and --resume,
--compile, the dataset kept on the device, and learner speed; prints one markdown table for docs/results.md.

    python benchmarks/gpu_check.py                          # on the first visible CUDA device
    python benchmarks/gpu_check.py --scripts crr_ls dime_bc --checks resume speed
    python benchmarks/gpu_check.py --device cpu             # dry run: the same table on the CPU, tiny sizes
    CUDA_VISIBLE_DEVICES=1 python benchmarks/gpu_check.py   # another GPU

Nothing to install beyond requirements.txt (d3rlpy's CRR is timed only where `import d3rlpy` works). Without
a CUDA device, and without --device cpu, it prints `no CUDA device: nothing to check` and exits 0. It exits 1
when a row fails. The runs go to --out (default: a temporary directory, removed when no row fails); every run
leaves its stdout and stderr there as <script>/<run>.log. Sized for under 10 minutes on one GPU; the last
line gives the time taken. The dry run uses the test suite's tiny sizes (hidden 16 16, batch 8, N = 3, 40
learner steps offline, 2000 env steps online); tests/test_gpu_check.py runs it.

First come the GPU, its driver, the torch, CUDA and cuDNN versions and the settings; then one table row per
check and script (pass, fail, or skip where a check cannot apply on this device). The scripts run in this
process (`main(Args(...))`), one after the other; on the GPU at the CPU preset's sizes (hidden 256 256 256,
batch 256, N = 20) on cartpole_swingup, the offline ones on a small zoo dataset built first:
- run fp32: a short run (300 learner steps offline; 3000 env steps, 500 learner steps online) with --cuda
  ends with finite evaluations. It runs under `torch.use_deterministic_algorithms` (warn only), as the
  reference of the resume row.
- run --bf16: the same run with --bf16, which must report bf16 precision; skipped where the script's own
  check_device would train in fp32 (a GPU or CPU without native bfloat16).
- SIGINT, --resume: the same run again, with SIGINT raised for real (`signal.raise_signal`) after learner step
  137 (7 in the dry run), not a log or checkpoint step; the script must exit with status 130 and print a
  stderr line naming its --resume command, and that resumed run's results.json must equal the fp32 run's
  (timing and paths aside). On the CPU bit for bit; on a GPU bit for bit or within a relative 1e-3 (float
  atomics), and the row says which, naming the ops that warned they have no deterministic implementation.
- --compile: the same run with --compile (torch.compile's inductor backend, as the scripts use it; in the
  dry run its eager backend: dynamo's graph capture without code generation, which takes minutes on a small
  CPU); it must end with finite evaluations; the row gives compiled against eager steps/s and graph breaks.
- data on device: every tensor of the dataset (offline) or replay (online) that learner_step samples from is
  on the device, and over 5 learner steps (not log steps) on the fp32 run's own inputs nothing crosses
  between host and device: no reads to the host (`item()`, `float(t)`), no copies between devices, no
  tensors made from host data (counted per aten op by a TorchDispatchMode, with the script line that made
  them; the optimisers' step counters, which PyTorch keeps on the host, aside). On a GPU torch.profiler must
  also see no Memcpy HtoD or DtoH and no cudaStreamSynchronize. On the CPU nothing can cross, so tensors
  made from host data are noted in the detail (each is a copy and a sync on a GPU) without failing the row.
- steps/s fp32, steps/s --bf16: learner_step timed on the fp32 run's own agent, optimisers, data and
  generator after the run (20 warm-up steps, then 200, synchronised), bf16 where the script's check_device
  keeps it; the losses must stay finite.
- steps/s fp32 of d3rlpy CRR, when d3rlpy imports: its `update` on a sampled batch, at the same batch,
  hidden sizes and N (as n_action_samples), on the same dataset and device; the detail gives crr_ls's ratio.
"""

import argparse
import collections
import contextlib
import dataclasses
import functools
import importlib
import io
import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFLINE = ("dime_bc", "dime_awbc", "crr_ls", "dime_multi")
ONLINE = ("dime_finetune", "dime_morl")
SCRIPTS = (*OFFLINE, *ONLINE)
ENV_ID = "cartpole_swingup"
NO_DEVICE = "no CUDA device: nothing to check"
# The checks --checks may pick; the fp32 run always runs, as the others start from it.
CHECKS = ("bf16", "resume", "compile", "device", "speed")
# The table's first column, by check.
LABELS = {
    "run": "run fp32",
    "bf16": "run --bf16",
    "resume": "SIGINT, --resume",
    "compile": "--compile",
    "device": "data on device",
    "speed": "steps/s fp32",
    "speed_bf16": "steps/s --bf16",
}
D3RLPY = "d3rlpy CRR"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Largest relative difference a resumed run may show on a GPU, where an op without a deterministic
# implementation (float atomics) may reorder sums.
GPU_RTOL = 1e-3
# Keys of results.json that are timing, and args that name the run rather than its results.
TIMING_KEYS = ("wall_time_s", "learner_steps_per_second")
RUN_KEYS = ("output_dir", "resume")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and schedules of the runs and measurements."""

    hidden_sizes: tuple[int, ...]
    batch_size: int
    num_samples: int
    offline_steps: int
    online_env_steps: int
    learning_starts: int
    replay_ratio: float
    log_every: int
    target_update_period: int
    stop_step: int
    eval_episodes: int
    # Offline evaluation episodes are cut at this many env steps (None: the task's 1000).
    episode_steps: int | None
    dataset_episodes: int
    warmup_steps: int
    timed_steps: int
    profiled_steps: int
    # torch.compile's backend for the --compile row (None: the scripts' own, inductor).
    compile_backend: str | None


# On a GPU: the CPU preset's sizes (the speed rows' setting) and a few hundred learner steps per run.
GPU = Settings(
    hidden_sizes=(256, 256, 256),
    batch_size=256,
    num_samples=20,
    offline_steps=300,
    online_env_steps=3000,
    learning_starts=1000,
    replay_ratio=0.25,
    log_every=50,
    target_update_period=100,
    stop_step=137,
    eval_episodes=2,
    episode_steps=None,
    dataset_episodes=10,
    warmup_steps=20,
    timed_steps=200,
    profiled_steps=5,
    compile_backend=None,
)
# The dry run (--device cpu): the test suite's tiny sizes and schedules.
DRY_RUN = Settings(
    hidden_sizes=(16, 16),
    batch_size=8,
    num_samples=3,
    offline_steps=40,
    online_env_steps=2000,
    learning_starts=500,
    replay_ratio=0.04,
    log_every=10,
    target_update_period=10,
    stop_step=7,
    eval_episodes=1,
    episode_steps=50,
    dataset_episodes=2,
    warmup_steps=2,
    timed_steps=10,
    profiled_steps=5,
    compile_backend="eager",
)


class Row(NamedTuple):
    """One line of the table."""

    check: str
    script: str
    result: str
    detail: str


@dataclasses.dataclass
class Plan:
    """What this invocation checks, where, with which settings, and where its runs go."""

    device: torch.device
    settings: Settings
    out: str
    scripts: tuple[str, ...]
    checks: tuple[str, ...]
    dataset: str = ""
    # Learner steps/s measured so far, by (script, "fp32" or "bf16").
    speeds: dict = dataclasses.field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        """Whether the scripts run with --cuda (a GPU check) or on the CPU (the dry run)."""
        return self.device.type == "cuda"

    @property
    def rtol(self) -> float:
        """The tolerance of the resume comparison: none on the CPU, whose kernels are deterministic."""
        return GPU_RTOL if self.cuda else 0.0

    def run_dir(self, script: str, run: str) -> str:
        """The --output-dir of one run (each run its own, as run directories are named by the second)."""
        return os.path.join(self.out, script, run)

    def log(self, script: str, run: str) -> str:
        """The file that keeps one run's stdout and stderr."""
        return os.path.join(self.out, script, f"{run}.log")


# ==== Running a script's main in this process ===========================================================
class LearnerSteps:
    """While in use, the module's learner_step goes through `step`: calls are counted, the last call's
    arguments kept (the agent, optimisers, data or replay, atoms, args and generator that main built), and
    SIGINT is raised after call `stop_at`. main finds learner_step in its module at every call."""

    def __init__(self, module, stop_at: int | None = None):
        self.module = module
        self.original = module.learner_step
        self.stop_at = stop_at
        self.calls = 0
        self.args: tuple = ()
        self.kwargs: dict = {}

    def __enter__(self) -> "LearnerSteps":
        self.module.learner_step = self.step
        return self

    def __exit__(self, *exc_info) -> None:
        self.module.learner_step = self.original

    def step(self, *args, **kwargs) -> dict:
        """The script's learner_step, counted and its inputs kept."""
        stats = self.original(*args, **kwargs)
        self.calls += 1
        self.args = args
        self.kwargs = kwargs
        if self.calls == self.stop_at:
            # A real signal: the script's own handler takes it, as it would a Ctrl-C.
            signal.raise_signal(signal.SIGINT)
        return stats

    def again(self, bf16: bool = False):
        """A function that makes one more learner step on the last call's inputs, with args.bf16 = bf16."""
        args = [with_bf16(value, self.module, bf16) for value in self.args]

        def step() -> dict:
            return self.original(*args, **self.kwargs)

        return step


def with_bf16(value, module, bf16: bool):
    """The script's Args with bf16 set as asked; any other value as it is."""
    if isinstance(value, module.Args):
        return dataclasses.replace(value, bf16=bf16)
    return value


@dataclasses.dataclass
class Outcome:
    """What one call of a script's main left behind."""

    steps: LearnerSteps
    results: dict | None = None
    exit_code: int | None = None
    error: str = ""
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0

    def problem(self) -> str:
        """Why the run did not end well, in one line; '' when main returned finite evaluations."""
        if self.error:
            return self.error
        if self.exit_code is not None:
            return f"exit status {self.exit_code}: {last_line(self.stderr)}"
        if self.steps.calls == 0:
            return "no learner step went through the module's learner_step"
        if not all_finite(self.results["evaluations"]):
            return "the evaluations are not finite"
        return ""


def run_main(module, flags: dict, log: str, stop_at: int | None = None) -> Outcome:
    """Call `module.main(Args(**flags))` here, its stdout and stderr kept (and written to `log`), its learner
    steps recorded (SIGINT after step `stop_at`), and the SIGINT and SIGTERM handlers put back afterwards."""
    handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    stdout = io.StringIO()
    stderr = io.StringIO()
    outcome = Outcome(steps=LearnerSteps(module, stop_at))
    start = time.perf_counter()
    try:
        with outcome.steps, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            outcome.results = module.main(module.Args(**flags), frozenset())
    except SystemExit as e:
        outcome.exit_code = e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        if stop_at is None:
            raise
        outcome.error = "SIGINT raised KeyboardInterrupt: the script did not handle it"
    except Exception as e:
        traceback.print_exc(file=stderr)
        outcome.error = f"{type(e).__name__}: {e}"
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    outcome.seconds = time.perf_counter() - start
    outcome.stdout = stdout.getvalue()
    outcome.stderr = stderr.getvalue()
    os.makedirs(os.path.dirname(log), exist_ok=True)
    pathlib.Path(log).write_text(f"{outcome.stdout}\n---- stderr\n{outcome.stderr}")
    return outcome


def last_line(text: str) -> str:
    """The last non-empty line of `text` ('' if none)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def all_finite(value) -> bool:
    """Whether every number in a JSON-like value is finite."""
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(all_finite(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


@contextlib.contextmanager
def deterministic():
    """torch.use_deterministic_algorithms(True, warn_only=True) inside, the previous setting after."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@contextlib.contextmanager
def compile_backend(backend: str | None):
    """nn.Module.compile (the scripts' --compile) with `backend` inside; None leaves torch's default."""
    original = torch.nn.Module.compile
    if backend:
        torch.nn.Module.compile = functools.partialmethod(original, backend=backend)
    try:
        yield
    finally:
        torch.nn.Module.compile = original


def run_flags(script: str, plan: Plan) -> dict:
    """Args of a script's short run: the plan's sizes on cartpole_swingup, evaluated at the start and the
    end, no periodic checkpoints (a stop writes its own)."""
    settings = plan.settings
    flags = dict(env_id=ENV_ID, hidden_sizes=settings.hidden_sizes, batch_size=settings.batch_size)
    flags.update(num_samples=settings.num_samples, cuda=plan.cuda, log_every=settings.log_every)
    flags.update(eval_episodes=settings.eval_episodes, checkpoint_every=0)
    flags.update(target_update_period=settings.target_update_period)
    if script in ONLINE:
        flags.update(num_envs=1, total_env_steps=settings.online_env_steps, buffer_size=10_000)
        flags.update(learning_starts=settings.learning_starts, replay_ratio=settings.replay_ratio)
        # Evaluations only at the start and the end.
        flags.update(eval_every=10**9)
        return flags
    flags.update(dataset=plan.dataset, total_steps=settings.offline_steps, eval_every=settings.offline_steps)
    if settings.episode_steps:
        flags["env_kwargs"] = json.dumps({"max_episode_steps": settings.episode_steps})
    if script == "dime_multi":
        flags["eval_alphas"] = (0.2, 1.0)
    else:
        flags["alpha"] = 0.5
    return flags


def describe_run(outcome: Outcome) -> str:
    """Learner steps, wall time and final return of a run that ended well."""
    results = outcome.results
    final = results["final"]
    # One record, or one per evaluated trade-off (dime_multi, dime_morl).
    means = [entry["mean"] for entry in final] if isinstance(final, list) else [final["mean"]]
    returns = number(means if len(means) > 1 else means[0])
    return f"{results['learner_steps']} learner steps in {outcome.seconds:.0f} s, final return {returns}"


def number(value) -> str:
    """A return, or a vector of returns (one per objective), to one decimal."""
    if isinstance(value, list | tuple):
        return "(" + ", ".join(number(v) for v in value) + ")"
    return f"{value:.1f}"


# ==== The checks, one row each ==========================================================================
def check_script(script: str, plan: Plan) -> Iterator[Row]:
    """Yield the rows of one script as they are measured: its fp32 run first, then the checks asked for."""
    try:
        module = importlib.import_module(script)
    except Exception as e:
        yield Row(LABELS["run"], script, "fail", f"cannot import it: {type(e).__name__}: {e}")
        return
    flags = run_flags(script, plan)
    reference_flags = {**flags, "output_dir": plan.run_dir(script, "fp32")}
    with deterministic():
        reference = run_main(module, reference_flags, plan.log(script, "fp32"))
    problem = reference.problem()
    if problem:
        yield Row(LABELS["run"], script, "fail", problem)
    else:
        yield Row(LABELS["run"], script, "pass", describe_run(reference))
    no_bf16 = bf16_refusal(module, plan)
    if "bf16" in plan.checks:
        yield guarded(LABELS["bf16"], script, bf16_row, module, script, flags, plan, no_bf16)
    if "resume" in plan.checks:
        yield guarded(LABELS["resume"], script, resume_row, module, script, flags, plan, reference)
    if "device" in plan.checks:
        yield guarded(LABELS["device"], script, device_row, script, plan, reference)
    if "speed" in plan.checks:
        yield guarded(LABELS["speed"], script, speed_row, script, plan, reference, "")
        yield guarded(LABELS["speed_bf16"], script, speed_row, script, plan, reference, no_bf16 or "bf16")
    if "compile" in plan.checks:
        yield guarded(LABELS["compile"], script, compile_row, module, script, flags, plan)


def guarded(label: str, script: str, check, *args) -> Row:
    """check(*args); a failed row naming the exception if it raised one."""
    try:
        return check(*args)
    except Exception as e:
        return Row(label, script, "fail", f"{type(e).__name__}: {e}")


def needs_reference(label: str, script: str, reference: Outcome) -> Row | None:
    """A failed row when the fp32 run, which this check starts from, failed; else None."""
    if reference.problem():
        return Row(label, script, "fail", "needs the fp32 run, which failed")
    return None


def bf16_refusal(module, plan: Plan) -> str:
    """'' when the script's own check_device keeps --bf16 on this device; else its notice or error (it
    refuses --bf16 on a GPU without bfloat16, and drops it on a CPU without native bfloat16 matmuls)."""
    args = module.Args(bf16=True, hidden_sizes=(8,), cuda=plan.cuda)
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            checked = module.check_device(args)[1]
    except SystemExit:
        return last_line(said.getvalue())
    if checked.bf16:
        return ""
    return last_line(said.getvalue()) or "its check_device trains in fp32 here"


def bf16_row(module, script: str, flags: dict, plan: Plan, refusal: str) -> Row:
    """The fp32 run's schedule with --bf16: it ends well and reports bf16 precision."""
    label = LABELS["bf16"]
    if refusal:
        return Row(label, script, "skip", refusal)
    bf16 = {**flags, "bf16": True, "output_dir": plan.run_dir(script, "bf16")}
    outcome = run_main(module, bf16, plan.log(script, "bf16"))
    problem = outcome.problem()
    if problem:
        return Row(label, script, "fail", problem)
    precision = outcome.results.get("precision", "")
    if "bf16" not in precision:
        return Row(label, script, "fail", f"the run reports precision {precision!r}")
    return Row(label, script, "pass", f"{describe_run(outcome)}, precision: {precision}")


def resume_row(module, script: str, flags: dict, plan: Plan, reference: Outcome) -> Row:
    """SIGINT after learner step `stop_step`: exit status 130 and the --resume line; resuming it gives the
    fp32 run's results."""
    label = LABELS["resume"]
    missing = needs_reference(label, script, reference)
    if missing:
        return missing
    stop_step = plan.settings.stop_step
    stopped_flags = {**flags, "output_dir": plan.run_dir(script, "stopped")}
    with deterministic():
        stopped = run_main(module, stopped_flags, plan.log(script, "stopped"), stop_at=stop_step)
    expected = 128 + signal.SIGINT
    if stopped.exit_code != expected:
        ended = stopped.problem() or "it ran to the end"
        return Row(label, script, "fail", f"expected exit status {expected} after SIGINT; {ended}")
    hint = resume_hint(stopped.stderr)
    if not hint:
        return Row(label, script, "fail", f"no --resume line on stderr: {last_line(stopped.stderr)}")
    checkpoint = hint.split(" --resume ")[1].strip()
    if not os.path.isfile(checkpoint):
        return Row(label, script, "fail", f"the --resume line names {checkpoint}, which does not exist")
    with deterministic():
        resumed = run_main(module, {"resume": checkpoint, "cuda": plan.cuda}, plan.log(script, "resumed"))
    problem = resumed.problem()
    if problem:
        return Row(label, script, "fail", f"the resumed run: {problem}")
    passed, verdict = resume_verdict(reference.results, resumed.results, plan.rtol)
    saved = re.search(r"learner step (\d+)", hint)
    where = f"checkpoint at learner step {saved.group(1)}" if saved else "checkpoint written"
    detail = f"SIGINT after learner step {stop_step}, exit {expected}, {where}; resumed: {verdict}"
    ops = nondeterministic_ops(reference.stderr + stopped.stderr + resumed.stderr)
    if ops and passed:
        detail += f"; no deterministic implementation: {', '.join(ops)}"
    return Row(label, script, "pass" if passed else "fail", detail)


def resume_hint(stderr: str) -> str:
    """The line a stopped script prints to be continued ('... --resume PATH'), or ''."""
    lines = [line for line in stderr.splitlines() if " --resume " in line]
    return lines[-1] if lines else ""


def nondeterministic_ops(text: str) -> list[str]:
    """Ops named by torch's warnings that they have no deterministic implementation, once each."""
    found = re.findall(r"(\w+) does not have a deterministic implementation", text)
    return sorted(set(found))


def comparable(results: dict) -> dict:
    """results.json without wall-clock timing and without the run's own directory and --resume path."""
    kept = {k: v for k, v in results.items() if k not in TIMING_KEYS}
    kept["args"] = {k: v for k, v in results.get("args", {}).items() if k not in RUN_KEYS}
    # As written to results.json: tuples become lists.
    return json.loads(json.dumps(kept))


def leaves(value, path: str = "results") -> dict:
    """Every leaf of a JSON-like value by its path, e.g. 'results.evaluations[1].mean'."""
    if isinstance(value, dict):
        items = [(f"{path}.{key}", item) for key, item in value.items()]
    elif isinstance(value, list):
        items = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    else:
        return {path: value}
    return {leaf: v for where, item in items for leaf, v in leaves(item, where).items()}


def largest_difference(a, b) -> tuple[str, float]:
    """Where two JSON-like values differ most: (the leaf's path, the relative difference there); ('', 0.0)
    when equal. A leaf that only one of them has differs by inf."""
    left = leaves(a)
    right = leaves(b)
    unmatched = sorted(left.keys() ^ right.keys())
    if unmatched:
        return unmatched[0], math.inf
    differences = {path: leaf_difference(left[path], right[path]) for path in left}
    worst = max(differences, key=differences.get, default="")
    return worst, differences.get(worst, 0.0)


def leaf_difference(a, b) -> float:
    """Numbers: |a - b| / max(|a|, |b|) (0 when equal, NaN equal to NaN; inf when one is not finite).
    Anything else (a string, None, a bool): 0 when equal, else inf."""
    numbers = isinstance(a, int | float) and isinstance(b, int | float)
    if not numbers or isinstance(a, bool) or isinstance(b, bool):
        return 0.0 if a == b else math.inf
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def resume_verdict(reference: dict, resumed: dict, rtol: float) -> tuple[bool, str]:
    """Whether a resumed run's results equal an uninterrupted run's (bit for bit, or within `rtol`), and
    how, in words."""
    path, difference = largest_difference(comparable(reference), comparable(resumed))
    if difference == 0.0:
        return True, "equal to the uninterrupted run, bit for bit"
    if difference <= rtol:
        largest = f"largest: {difference:.1e} at {path}"
        return True, f"equal within a relative {rtol:g}, not bit for bit ({largest})"
    if math.isinf(difference):
        return False, f"differs from the uninterrupted run at {path}"
    return False, f"differs from the uninterrupted run at {path} by a relative {difference:.2g}"


# ==== Data on the device: a dispatch-mode counter and, on a GPU, the profiler ===========================
class HostTraffic(TorchDispatchMode):
    """Counts the aten ops that move data between the host and `device`: reads to the host
    (_local_scalar_dense: item(), float(t)), copies between devices (_to_copy, copy_), and tensors made on
    `device` from host data (lift_fresh: torch.tensor, new_tensor, as_tensor). The optimisers' step counters,
    read on the host by PyTorch's design, are `exempt` (their data pointers). Each count is keyed by kind, op
    and the line of the project that called it."""

    def __init__(self, device: torch.device, exempt: set[int]):
        super().__init__()
        self.device = device
        self.exempt = exempt
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Run the op; count it if it moves data between the host and the device."""
        out = func(*args, **(kwargs or {}))
        kind = self.kind(func.overloadpacket, args, out)
        if kind:
            self.counts[f"{kind} ({func.overloadpacket}, {caller()})"] += 1
        return out

    def kind(self, op, args, out) -> str:
        """'read to the host', 'copy between devices', 'tensor from host data', or '' for other ops."""
        aten = torch.ops.aten
        if op is aten._local_scalar_dense:
            on_device = args[0].device.type == self.device.type
            if on_device and args[0].data_ptr() not in self.exempt:
                return "read to the host"
        if op in (aten._to_copy, aten.copy_):
            tensors = [t for t in (*args, out) if isinstance(t, torch.Tensor)]
            if len({t.device.type for t in tensors}) > 1:
                return "copy between devices"
        if op in (aten.lift_fresh, aten.lift_fresh_copy) and out.device.type == self.device.type:
            return "tensor from host data"
        return ""


def caller() -> str:
    """file:line of the innermost frame in the top-level scripts or common/."""
    for frame in reversed(traceback.extract_stack()):
        relative = os.path.relpath(frame.filename, ROOT)
        if os.path.dirname(relative) in ("", "common"):
            return f"{relative}:{frame.lineno}"
    return "torch"


def dataset_tensors(inputs) -> dict:
    """The tensors learner_step samples from, among its inputs: the offline scripts' dict of transitions, or
    the online scripts' replay (its `data`)."""
    for value in inputs:
        if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            return value
        data = getattr(value, "data", None)
        if isinstance(data, dict):
            return data
    return {}


def step_counters(inputs) -> set[int]:
    """Data pointers of the step counters of the optimisers among learner_step's inputs (in a dict)."""
    dicts = [value for value in inputs if isinstance(value, dict)]
    optimizers = [v for d in dicts for v in d.values() if isinstance(v, torch.optim.Optimizer)]
    states = [state for optimizer in optimizers for state in optimizer.state.values()]
    return {state["step"].data_ptr() for state in states if torch.is_tensor(state.get("step"))}


def profiled_transfers(step, steps: int) -> collections.Counter:
    """torch.profiler's Memcpy HtoD and DtoH and host synchronisations over `steps` calls of `step` (CUDA)."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
    counts: collections.Counter = collections.Counter()
    for event in profiler.events():
        if event.name.startswith(("Memcpy HtoD", "Memcpy DtoH")):
            counts[event.name.split(" (")[0]] += 1
        if event.name in ("cudaStreamSynchronize", "cudaMemcpy"):
            counts[event.name] += 1
    return counts


def device_row(script: str, plan: Plan, reference: Outcome) -> Row:
    """The dataset or replay on the device, and nothing between host and device in a learner step."""
    label = LABELS["device"]
    missing = needs_reference(label, script, reference)
    if missing:
        return missing
    inputs = reference.steps.args
    data = dataset_tensors(inputs)
    if not data:
        return Row(label, script, "fail", "no dataset or replay among learner_step's inputs")
    away = sorted(k for k, v in data.items() if v.device.type != plan.device.type)
    if away:
        return Row(label, script, "fail", f"not on {plan.device.type}: {', '.join(away)}")
    megabytes = sum(v.numel() * v.element_size() for v in data.values()) / 2**20
    source = "replay" if script in ONLINE else "dataset"
    where = f"{source}: {len(data)} tensors ({megabytes:.1f} MB) on {plan.device.type}"
    step = reference.steps.again()
    steps = plan.settings.profiled_steps
    with HostTraffic(plan.device, step_counters(inputs)) as traffic:
        for _ in range(steps):
            step()
    # Nothing can cross on the CPU: there, tensors made from host data are noted (on a GPU, each is a copy).
    noted = [k for k in traffic.counts if k.startswith("tensor from") and not plan.cuda]
    found = [f"{n / steps:g} per step: {k}" for k, n in traffic.counts.items() if k not in noted]
    notes = [f"{traffic.counts[k] / steps:g} per step: {k}" for k in noted]
    if plan.cuda:
        profiled = profiled_transfers(step, steps)
        found += [f"{n / steps:g} per step: {k} (profiler)" for k, n in profiled.items()]
    if found:
        return Row(label, script, "fail", f"{where}; {'; '.join(found)}")
    checked = ["no reads to the host", "no copies between devices"]
    if not notes:
        checked.append("no tensors from host data")
    if plan.cuda:
        checked.append("profiler: no Memcpy HtoD or DtoH, no stream synchronisation")
    detail = f"{where}; {steps} learner steps: {', '.join(checked)}"
    if notes:
        detail += f"; each a host-to-device copy on a GPU: {'; '.join(notes)}"
    return Row(label, script, "pass", detail)


# ==== Speed =============================================================================================
def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def steps_per_second(step, plan: Plan) -> tuple[float, bool]:
    """Calls of `step` per second after warm-up, synchronised, and whether its last losses are finite."""
    settings = plan.settings
    for _ in range(settings.warmup_steps):
        step()
    synchronize(plan.device)
    start = time.perf_counter()
    for _ in range(settings.timed_steps):
        stats = step()
    synchronize(plan.device)
    seconds = time.perf_counter() - start
    finite = all(bool(torch.isfinite(v).all()) for v in stats.values())
    return settings.timed_steps / seconds, finite


def describe_speed(per_second: float, plan: Plan) -> str:
    """Steps/s, ms per step and the setting they were measured at."""
    settings = plan.settings
    hidden = " ".join(map(str, settings.hidden_sizes))
    setting = f"batch {settings.batch_size}, N = {settings.num_samples}, hidden {hidden}"
    return f"{per_second:,.0f} steps/s ({1e3 / per_second:.2f} ms per step), {setting}"


def speed_row(script: str, plan: Plan, reference: Outcome, precision: str) -> Row:
    """learner_step timed on the fp32 run's own inputs; `precision` '' (fp32), 'bf16', or why not bf16."""
    label = LABELS["speed_bf16"] if precision else LABELS["speed"]
    missing = needs_reference(label, script, reference)
    if missing:
        return missing
    if precision not in ("", "bf16"):
        return Row(label, script, "skip", precision)
    per_second, finite = steps_per_second(reference.steps.again(bf16=precision == "bf16"), plan)
    plan.speeds[script, precision or "fp32"] = per_second
    if not finite:
        return Row(label, script, "fail", f"{describe_speed(per_second, plan)}; the losses are not finite")
    return Row(label, script, "pass", describe_speed(per_second, plan))


def compile_row(module, script: str, flags: dict, plan: Plan) -> Row:
    """The fp32 run's schedule with --compile: it ends well; its compiled steps/s beside eager's."""
    label = LABELS["compile"]
    backend = plan.settings.compile_backend
    breaks = graph_breaks()
    compiled = {**flags, "compile": True, "output_dir": plan.run_dir(script, "compile")}
    with compile_backend(backend):
        outcome = run_main(module, compiled, plan.log(script, "compile"))
        problem = outcome.problem()
        timing = None if problem else steps_per_second(outcome.steps.again(), plan)
    breaks = graph_breaks() - breaks
    # Compiled code holds on to the run; later scripts start from empty caches.
    torch._dynamo.reset()
    if problem:
        return Row(label, script, "fail", problem)
    per_second, finite = timing
    detail = f"{describe_run(outcome)} (compilation included), {breaks} graph breaks; "
    detail += f"{per_second:,.0f} steps/s compiled"
    eager = plan.speeds.get((script, "fp32"))
    if eager:
        detail += f", {eager:,.0f} eager"
    if backend:
        detail += f"; backend {backend}"
    if not finite:
        return Row(label, script, "fail", f"{detail}; the losses are not finite")
    return Row(label, script, "pass", detail)


def graph_breaks() -> int:
    """Graph breaks torch.compile has met in this process so far."""
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def d3rlpy_row(plan: Plan) -> Row:
    """d3rlpy's CRR steps/s at the same batch, hidden sizes, N and device, on the same dataset."""
    label = LABELS["speed"]
    quiet = io.StringIO()
    try:
        # d3rlpy warns about gym on import.
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            import d3rlpy
    except Exception as e:
        return Row(label, D3RLPY, "skip", f"d3rlpy does not import here ({type(e).__name__})")
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        algo, data = make_d3rlpy_crr(d3rlpy, plan)
    step = functools.partial(d3rlpy_step, algo, data, plan.settings.batch_size)
    per_second, finite = steps_per_second(step, plan)
    detail = f"d3rlpy {d3rlpy.__version__}, N as n_action_samples: {describe_speed(per_second, plan)}"
    ours = plan.speeds.get(("crr_ls", "fp32"))
    if ours:
        detail += f"; crr_ls fp32: {ours:,.0f} steps/s, {ours / per_second:.1f}x d3rlpy's"
    return Row(label, D3RLPY, "pass" if finite else "fail", detail)


def make_d3rlpy_crr(d3rlpy, plan: Plan):
    """d3rlpy's CRR (its defaults otherwise: scalar critic, advantage 'mean', exp weights) built on the
    plan's dataset, on the plan's device, and that dataset as its MDPDataset."""
    import h5py
    import numpy as np

    d3rlpy.seed(0)
    with h5py.File(plan.dataset, "r") as h5:
        columns = {k: h5[k][:].astype(np.float32) for k in ("observations", "actions", "rewards")}
        columns.update({k: h5[k][:].astype(np.float32) for k in ("terminals", "timeouts")})
    data = d3rlpy.dataset.MDPDataset(
        columns["observations"],
        columns["actions"],
        columns["rewards"],
        columns["terminals"],
        timeouts=columns["timeouts"],
    )
    settings = plan.settings
    encoder = d3rlpy.models.VectorEncoderFactory(list(settings.hidden_sizes))
    config = d3rlpy.algos.CRRConfig(
        batch_size=settings.batch_size,
        n_action_samples=settings.num_samples,
        actor_encoder_factory=encoder,
        critic_encoder_factory=encoder,
    )
    algo = config.create(device="cuda:0" if plan.cuda else "cpu:0")
    algo.build_with_dataset(data)
    return algo, data


def d3rlpy_step(algo, data, batch_size: int) -> dict:
    """One step of d3rlpy's fit loop: sample a batch, update; its losses as tensors, as ours return them."""
    losses = algo.update(data.sample_transition_batch(batch_size))
    return {k: torch.tensor(float(v)) for k, v in losses.items()}


# ==== Setting up, the header, the table ==================================================================
def build_dataset(plan: Plan) -> str:
    """A small zoo dataset of cartpole_swingup (half its episodes uniform-random) as HDF5 in --out."""
    from common import datasets

    path = os.path.join(plan.out, f"{ENV_ID}_{plan.settings.dataset_episodes}_episodes.hdf5")
    episodes = plan.settings.dataset_episodes
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        ds = datasets.build_zoo_dataset(ENV_ID, episodes, random_fraction=0.5, workers=1, progress=False)
        datasets.save_hdf5(ds, path)
    return path


def header(plan: Plan) -> list[str]:
    """The device, driver, library versions and settings, as markdown list items."""
    if plan.cuda:
        props = torch.cuda.get_device_properties(0)
        memory = props.total_memory / 2**30
        lines = [f"- GPU: {props.name}, {memory:.0f} GiB, compute capability {props.major}.{props.minor}"]
        lines.append(f"- driver: {driver_version()}")
    else:
        lines = [f"- device: CPU ({cpu_name()}), dry run (--device cpu) at the test suite's tiny sizes"]
    cuda = torch.version.cuda or "none"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else "none"
    python = sys.version.split()[0]
    lines.append(f"- torch {torch.__version__}, CUDA {cuda}, cuDNN {cudnn}, Python {python}")
    lines.append(f"- settings: {describe_settings(plan.settings)}")
    return lines


def driver_version() -> str:
    """The NVIDIA driver's version (nvidia-smi), with the CUDA version it supports where torch tells it."""
    command = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        version = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        version = ""
    supported = getattr(torch._C, "_cuda_getDriverVersion", None)
    if supported:
        code = supported()
        version += f" (supports CUDA {code // 1000}.{code % 1000 // 10})"
    return version.strip() or "unknown (no nvidia-smi)"


def cpu_name() -> str:
    """The CPU's model name (Linux), or the platform's processor string."""
    import platform

    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def describe_settings(settings: Settings) -> str:
    """The settings in one line."""
    hidden = " ".join(map(str, settings.hidden_sizes))
    online_steps = int((settings.online_env_steps - settings.learning_starts) * settings.replay_ratio)
    episodes = settings.dataset_episodes
    parts = [f"{ENV_ID}, hidden {hidden}, batch {settings.batch_size}, N = {settings.num_samples}"]
    parts.append(f"offline runs {settings.offline_steps} learner steps on a {episodes}-episode zoo dataset")
    parts.append(f"online runs {settings.online_env_steps} env steps (~{online_steps} learner steps)")
    parts.append(f"SIGINT after learner step {settings.stop_step}")
    parts.append(f"speed over {settings.timed_steps} steps after {settings.warmup_steps} of warm-up")
    parts.append(f"--compile with {settings.compile_backend or 'inductor'}")
    return "; ".join(parts)


def table_line(cells) -> str:
    """A markdown table line; '|' inside a cell is escaped."""
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (`argv`, or sys.argv when None)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", default="cuda", choices=["cuda", "cpu"], help="cpu: the dry run at tiny sizes"
    )
    parser.add_argument("--scripts", nargs="+", default=list(SCRIPTS), choices=SCRIPTS)
    parser.add_argument(
        "--checks", nargs="+", default=list(CHECKS), choices=CHECKS, help="besides the fp32 run"
    )
    parser.add_argument("--out", help="directory for the runs and logs (default: a temporary one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print the header and the table; the exit status: 1 if a row failed, else 0."""
    opts = parse_args(argv)
    if opts.device == "cuda" and not torch.cuda.is_available():
        print(NO_DEVICE)
        return 0
    start = time.perf_counter()
    # Before dm_control loads; on a GPU before cuBLAS starts (deterministic algorithms need it).
    os.environ.setdefault("MUJOCO_GL", "disable")
    if opts.device == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    out = opts.out or tempfile.mkdtemp(prefix="gpu_check_")
    os.makedirs(out, exist_ok=True)
    settings = GPU if opts.device == "cuda" else DRY_RUN
    plan = Plan(torch.device(opts.device), settings, out, tuple(opts.scripts), tuple(opts.checks))
    print("\n".join(header(plan)), end="\n\n")
    print(table_line(["check", "script", "result", "detail"]))
    print(table_line(["---"] * 4), flush=True)
    rows = []
    if set(plan.scripts) & set(OFFLINE) or "speed" in plan.checks:
        plan.dataset = build_dataset(plan)
    for script in plan.scripts:
        for row in check_script(script, plan):
            rows.append(row)
            print(table_line(row), flush=True)
    if "speed" in plan.checks:
        row = guarded(LABELS["speed"], D3RLPY, d3rlpy_row, plan)
        rows.append(row)
        print(table_line(row), flush=True)
    failed = sum(row.result == "fail" for row in rows)
    skipped = sum(row.result == "skip" for row in rows)
    minutes = (time.perf_counter() - start) / 60
    verdict = f"**{failed} of {len(rows)} rows fail**" if failed else f"**every row passes** ({len(rows)})"
    print(f"\n{verdict}, {skipped} skipped, in {minutes:.1f} min")
    if failed and not opts.out:
        print(f"the runs and their logs are kept in {out}", file=sys.stderr)
    if not failed and not opts.out:
        shutil.rmtree(out, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
