"""Our learners against d3rlpy's CRR on the same datasets: learner speed, and final returns (--quality).

    python benchmarks/vs_d3rlpy.py                                  # speed: zoo cheetah_run, CPU preset
    python benchmarks/vs_d3rlpy.py --scripts crr_ls dime_bc --rounds 3 --steps 300
    python benchmarks/vs_d3rlpy.py --quality --datasets cheetah_run cheetah_run:random=0.5 --seeds 1 2 3

d3rlpy is not a project dependency: it runs in its own virtual environment, given by --d3rlpy-python
(benchmarks/README.md shows how to make it), as separate `--worker` processes.

Speed: every measurement is a fresh process, and the rounds alternate d3rlpy and our scripts (in reverse
order every other round) so that both see the same machine load; the best round of each configuration is
kept.
- d3rlpy: `CRRConfig(batch_size=256)` with 256×3 encoders for actor and critic (its defaults otherwise:
  scalar critic, advantage "mean", exp weights, β = 1), at its default `n_action_samples=4` and at our
  N = 20 (the same number of sampled actions: equal work but for the critic's head), a step being what its
  `fit` loop does: `dataset.sample_transition_batch` then `algo.update`.
- ours: the script's `learner_step` (minibatch drawn on the device, C51 critic with 101 atoms, N = 20
  sampled actions) at the CPU preset, in each of --modes, the precision settled as the script settles it
  (`check_device`: --bf16 is dropped on a CPU without native bfloat16). The offline scripts train on the
  dataset; the online learners on a full replay of random transitions of its sizes (benchmarks/speed.py).
Every row: ms per learner step, the ratios d3rlpy / ours at N = 4 and at N = 20 (≥ 1: ours is no slower),
the step's matmul floor (its matmul FLOPs over the matmul peak of the precision it trains in), that peak,
whether the CPU multiplies bfloat16 natively, and the CPU model. The peaks are measured in every round, only
for the precisions the run trains in, on 512² matmuls for about a second each.

Quality (--quality): for every dataset and seed, d3rlpy's CRR (as above, N = 4) and each of our --learners
train for --train-steps learner steps on the same HDF5 file; every learner's policy mean is evaluated every
--eval-every steps on --eval-episodes episodes of the same env with the same reset seeds (our scripts'
own evaluation; d3rlpy's policies are exported with `save_policy` and evaluated here the same way). Cells
live in <out>/<dataset>/<learner>/seed_<s>/ with a results.json each, so a re-run skips finished cells and
adds seeds. Prints the final return per learner and dataset: mean and 95 % interval over seeds.
Datasets: ENV (its zoo dataset), ENV:random=F (a zoo dataset with a share F of uniform-random episodes, a
mixed-quality set where BC is beatable), ENV:gaits=F (a share F of open-loop gait episodes, the rest zoo
policies: many different actions at the same states) or ENV:PATH (an HDF5 file).
"""

import argparse
import dataclasses
import glob
import json
import os
import subprocess
import sys
import time
import warnings

# benchmarks/aggregate.py: the Student t every table here uses
from aggregate import mean_ci95

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN = (256, 256, 256)
BATCH = 256
# d3rlpy's default number of sampled actions, and ours (the CPU preset's and the paper's N)
D3RLPY_SAMPLES = 4
OUR_SAMPLES = 20
ONLINE = ("dime_morl", "dime_finetune")
# the online learners' replay: cheetah_run's observation and action sizes
OBS_DIM = 17
ACT_DIM = 6
# the peak matmuls: small enough that even a CPU without native bfloat16 (~1 GFLOP/s) does one in 0.3 s
PEAK_SIZE = 512
PEAK_BUDGET_S = 1.0


def make_d3rlpy_crr(dataset: str, seed: int = 0, samples: int = D3RLPY_SAMPLES):
    """d3rlpy's CRR at the comparison setting with `samples` sampled actions, and the project HDF5 `dataset`
    as its MDPDataset."""
    import d3rlpy
    import h5py
    import numpy as np

    d3rlpy.seed(seed)
    with h5py.File(dataset, "r") as h5:
        columns = {k: h5[k][:] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    data = d3rlpy.dataset.MDPDataset(
        columns["observations"].astype(np.float32),
        columns["actions"].astype(np.float32),
        columns["rewards"].astype(np.float32),
        columns["terminals"].astype(np.float32),
        timeouts=columns["timeouts"].astype(np.float32),
    )
    encoder = d3rlpy.models.VectorEncoderFactory(list(HIDDEN))
    config = d3rlpy.algos.CRRConfig(
        batch_size=BATCH,
        n_action_samples=samples,
        actor_encoder_factory=encoder,
        critic_encoder_factory=encoder,
    )
    algo = config.create(device="cpu:0")
    algo.build_with_dataset(data)
    return algo, data


def timed(step, steps: int, warmup: int) -> dict:
    """Seconds per call of `step` over `steps` calls after `warmup` untimed ones, and the matmul FLOPs of one
    more call."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    return {"seconds_per_step": seconds, "flops_per_step": step_flops(step)}


def d3rlpy_worker(dataset: str, steps: int, warmup: int, samples: int) -> dict:
    """Seconds and matmul FLOPs per d3rlpy CRR step (batch sampling + update) with `samples` sampled actions
    on the project HDF5 `dataset`; d3rlpy trains in fp32."""
    algo, data = make_d3rlpy_crr(dataset, samples=samples)

    def step():
        algo.update(data.sample_transition_batch(BATCH))

    return {**timed(step, steps, warmup), "precision": "float32"}


def d3rlpy_train_worker(dataset: str, steps: int, eval_every: int, seed: int, cell: str) -> None:
    """Train d3rlpy's CRR with its own `fit` loop; export the greedy policy (TorchScript) at step 0 and
    every `eval_every` steps to <cell>/policy_<step>.pt for evaluation in the project's environment, and
    write the advantage diagnostics our scripts log to <cell>/diagnostics.json (`d3rlpy_diagnostics`)."""
    from d3rlpy.logging import NoopAdapterFactory

    algo, data = make_d3rlpy_crr(dataset, seed)
    algo.save_policy(os.path.join(cell, "policy_0.pt"))
    diagnostics = []

    def save(algo, epoch, step):
        algo.save_policy(os.path.join(cell, f"policy_{step}.pt"))
        diagnostics.append({"step": step, **d3rlpy_diagnostics(algo, dataset)})
        with open(os.path.join(cell, "diagnostics.json"), "w") as f:
            json.dump(diagnostics, f, indent=1)

    algo.fit(
        data,
        n_steps=steps,
        n_steps_per_epoch=eval_every,
        logger_adapter=NoopAdapterFactory(),
        show_progress=False,
        epoch_callback=save,
    )


def d3rlpy_diagnostics(algo, dataset: str, rows: int = 4096) -> dict:
    """CRR's advantage of the dataset action on evenly spaced rows, as d3rlpy's loss forms it: A = Q(s, a_D)
    - mean over 4 policy samples of Q(s, a), with the weights exp(A) clipped at 20, under the names of our
    scripts' diagnostics (docs/dime_bc.md, "Logged metrics")."""
    import h5py
    import numpy as np

    with h5py.File(dataset, "r") as h5:
        idx = np.linspace(0, len(h5["rewards"]) - 1, rows).astype(int)
        obs = h5["observations"][:][idx]
        actions = h5["actions"][:][idx]
    q_data = algo.predict_value(obs, actions)
    q_samples = np.stack([algo.predict_value(obs, algo.sample_action(obs)) for _ in range(D3RLPY_SAMPLES)])
    advantage = q_data - q_samples.mean(0)
    weights = np.minimum(np.exp(advantage), 20.0)
    return {
        "q_min": float(q_samples.min()),
        "q_max": float(q_samples.max()),
        "advantage_mean": float(advantage.mean()),
        "advantage_std": float(advantage.std()),
        "weight_below_0.1": float((weights < 0.1).mean()),
        "weight_above_10": float((weights > 10).mean()),
        "weight_ess": float(weights.sum() ** 2 / (len(weights) * (weights**2).sum())),
    }


def settled_args(module, args, nonnative: bool):
    """`args` as the script's main() settles them on the CPU (`check_device`: the allocator settings, and
    --bf16 dropped without native bfloat16); `nonnative` forces "not native", as on an AVX2 CPU."""
    import torch

    if nonnative:
        torch.cpu._is_avx512_bf16_supported = lambda: False
        torch.cpu._is_amx_tile_supported = lambda: False
    return module.check_device(dataclasses.replace(args, cuda=False))[1]


def offline_step(module, script: str, dataset: str, bf16: bool, compile: bool, nonnative: bool):
    """One offline script's learner step at the CPU preset on `dataset`, and the args it trains with."""
    import torch

    from common.datasets import load_hdf5, nstep_transitions

    tradeoff = {} if script == "dime_multi" else {"alpha": 0.5}
    args = module.Args(**tradeoff, hidden_sizes=HIDDEN, batch_size=BATCH, num_samples=OUR_SAMPLES, bf16=bf16)
    args = settled_args(module, args, nonnative)
    ds = load_hdf5(dataset)
    data = {k: torch.as_tensor(v) for k, v in nstep_transitions(ds, args.n_step, args.gamma).items()}
    agent = module.Agent(ds.observations.shape[1], ds.actions.shape[1], args)
    if compile:
        module.compile_networks(agent)
    optimizers = module.make_optimizers(agent, args)
    atoms = torch.linspace(args.v_min, args.v_max, args.num_atoms)
    gen = torch.Generator().manual_seed(0)
    return (lambda: module.learner_step(agent, optimizers, data, atoms, args, gen)), args


def online_step(module, script: str, bf16: bool, compile: bool, nonnative: bool):
    """One online script's learner step at the CPU preset on a full replay of random transitions of
    cheetah_run's sizes (benchmarks/speed.py's setup; dime_finetune with a teacher of the policy's size), and
    the args it trains with."""
    import speed
    import torch

    args = module.Args(env_id="cheetah_run", hidden_sizes=HIDDEN, bf16=bf16)
    bf16 = settled_args(module, args, nonnative).bf16
    cpu = torch.device("cpu")
    setup = speed.online_setup(module, "cpu", cpu, OUR_SAMPLES, compile, bf16, OBS_DIM, ACT_DIM)
    args, agent, optimizers, replay = setup
    gen = torch.Generator().manual_seed(0)
    if script == "dime_morl":
        atoms = module.critic_supports(args, ACT_DIM)
        return (lambda: module.learner_step(agent, optimizers, replay, atoms, args, gen)), args
    teacher = module.Policy(OBS_DIM, ACT_DIM, args.hidden_sizes).eval()
    atoms = torch.linspace(args.v_min, args.v_max, args.num_atoms)
    return (lambda: module.learner_step(agent, optimizers, replay, teacher, atoms, args, gen)), args


def ours_worker(
    script: str, dataset: str, steps: int, warmup: int, bf16: bool, compile: bool, nonnative: bool = False
) -> dict:
    """Seconds and matmul FLOPs per learner step of one of our scripts (CPU preset, N = 20), and the precision
    it trained in: the offline ones on `dataset`, the online ones on a full replay of random transitions."""
    import importlib

    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    module = importlib.import_module(script)
    if script in ONLINE:
        step, args = online_step(module, script, bf16, compile, nonnative)
    else:
        step, args = offline_step(module, script, dataset, bf16, compile, nonnative)
    return {**timed(step, steps, warmup), "precision": "bfloat16" if args.bf16 else "float32"}


def step_flops(step) -> int:
    """Floating-point operations of the matmuls (and convolutions) in one call of `step`, forward and
    backward, as torch's FlopCounterMode counts them: what the matmul floor divides by the peak."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def peak_worker(dtype: str, size: int = PEAK_SIZE, budget_s: float = PEAK_BUDGET_S) -> float:
    """The machine's matmul throughput in `dtype` here and now, in GFLOP/s: the fastest of size² matmuls
    repeated for `budget_s` seconds, and at least twice (the first one warms up)."""
    import torch

    a = torch.randn(size, size, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, dtype=getattr(torch, dtype))
    durations = []
    start = time.perf_counter()
    while len(durations) < 2 or time.perf_counter() - start < budget_s:
        begin = time.perf_counter()
        a @ b
        durations.append(time.perf_counter() - begin)
    return 2 * size**3 / min(durations) / 1e9


def bf16_native() -> bool:
    """Whether this CPU multiplies bfloat16 natively (avx512_bf16 or AMX): the test of the scripts'
    `check_device`, without which --bf16 trains in fp32."""
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def cpu_fields() -> dict:
    """The first CPU's fields in /proc/cpuinfo (Linux; empty elsewhere)."""
    if not os.path.exists("/proc/cpuinfo"):
        return {}
    with open("/proc/cpuinfo") as f:
        first = f.read().split("\n\n")[0]
    fields = [line.split(":", 1) for line in first.splitlines() if ":" in line]
    return {key.strip(): value.strip() for key, value in fields}


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers (a VM may show only "AMD EPYC": family 25 is
    Zen 3, 23 Zen 1/2, 26 Zen 5)."""
    info = cpu_fields()
    name = info.get("model name", "unknown CPU")
    if "cpu family" not in info:
        return name
    return f"{name} (family {info['cpu family']}, model {info.get('model', '?')})"


def cpu_flags() -> str:
    """The CPU's flags that decide matmul speed."""
    flags = cpu_fields().get("flags", "").split()
    return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)


@dataclasses.dataclass(frozen=True)
class Config:
    """One configuration of the speed run: its row name, interpreter, worker arguments, number of sampled
    actions, critic, and the precision it trains in (what its floor is computed at)."""

    name: str
    python: str
    worker: tuple[str, ...]
    samples: int
    critic: str
    dtype: str


def run_dtype(mode: str, native: bool) -> str:
    """The precision a mode trains in: bfloat16 for --bf16 only on a CPU that multiplies it natively (the
    scripts drop --bf16 elsewhere), never for bf16-nonnative (--bf16 with "not native" forced)."""
    parts = mode.split("-")
    bf16 = "bf16" in parts and "nonnative" not in parts and native
    return "bfloat16" if bf16 else "float32"


def speed_plan(scripts: list[str], modes: list[str], native: bool, d3rlpy_python: str) -> list[Config]:
    """The speed run's configurations: d3rlpy's CRR at its default N = 4 and at our N = 20, then every script
    in every mode."""
    plan = [
        Config(f"d3rlpy N={n}", d3rlpy_python, ("d3rlpy", str(n)), n, "scalar", "float32")
        for n in (D3RLPY_SAMPLES, OUR_SAMPLES)
    ]
    for script in scripts:
        for mode in modes:
            worker = (script, *mode.split("-"))
            dtype = run_dtype(mode, native)
            plan.append(Config(f"{script} {mode}", sys.executable, worker, OUR_SAMPLES, "C51", dtype))
    return plan


def needed_peaks(plan: list[Config]) -> list[str]:
    """The matmul peaks a run needs: one per precision its configurations train in, fp32 first."""
    return sorted({config.dtype for config in plan}, reverse=True)


def round_order(plan: list[Config], round_index: int) -> list[Config]:
    """The plan in order on even rounds and reversed on odd ones: d3rlpy, ours, ours, d3rlpy, so that over two
    rounds neither side is always measured first."""
    return list(plan) if round_index % 2 == 0 else list(reversed(plan))


def measure(python: str, worker: list[str], opts, threads: int) -> dict:
    """Run one worker process and return what it printed: seconds and matmul FLOPs per step, or GFLOP/s."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [python, os.path.abspath(__file__), "--worker", *worker, "--dataset", opts.dataset]
    command += ["--steps", str(opts.steps), "--warmup", str(opts.warmup)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(worker)} failed:\n{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed_record(config: Config, best: dict, flops: dict, peaks: dict, machine: dict) -> dict:
    """One row of the speed table: ms per step, the ratios to d3rlpy at N = 4 and N = 20, the matmul floor at
    the peak of the precision the configuration trains in, that peak and the machine."""
    seconds = best[config.name]
    peak = peaks[config.dtype]
    floor = flops[config.name] / (peak * 1e9)
    return {
        "learner": config.name,
        "num_samples": config.samples,
        "critic": config.critic,
        "precision": config.dtype,
        "ms_per_step": seconds * 1e3,
        "ratio": best[f"d3rlpy N={D3RLPY_SAMPLES}"] / seconds,
        "ratio_n20": best[f"d3rlpy N={OUR_SAMPLES}"] / seconds,
        "gflop_per_step": flops[config.name] / 1e9,
        "floor_ms": floor * 1e3,
        "over_floor": seconds / floor,
        "peak_gflops": peak,
        **machine,
    }


SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16"}
SPEED_COLUMNS = (
    ("learner", "learner", "<22", "s"),
    ("N", "num_samples", ">3", "d"),
    ("critic", "critic", ">7", "s"),
    ("dtype", "precision", ">6", "s"),
    ("ms/step", "ms_per_step", ">8", ".1f"),
    ("ratio", "ratio", ">6", ".2f"),
    ("ratio N=20", "ratio_n20", ">11", ".2f"),
    ("GFLOP", "gflop_per_step", ">6", ".2f"),
    ("floor ms", "floor_ms", ">9", ".1f"),
    ("/floor", "over_floor", ">7", ".2f"),
    ("peak GFLOP/s", "peak_gflops", ">13", ".0f"),
    ("bf16 native", "bf16_native", ">12", "s"),
)


def speed_line(record: dict | None) -> str:
    """A row of the printed speed table, or its header for None; the CPU model last."""
    cells = []
    for title, key, align, kind in SPEED_COLUMNS:
        if record is None:
            cells.append(f"{title:{align}}")
            continue
        value = record[key]
        if key == "bf16_native":
            value = "yes" if value else "no"
        if key == "precision":
            value = SHORT_DTYPES[value]
        cells.append(f"{value:{align}{kind}}")
    cpu = "  CPU" if record is None else f"  {record['cpu']}"
    return " ".join(cells) + cpu


def measure_rounds(opts, plan: list[Config]) -> tuple[dict, dict, dict]:
    """Every configuration of `plan` once per round, the order reversed every other round, and the matmul
    peaks the plan needs at the start of each round: the best seconds per step, the FLOPs per step and the
    best GFLOP/s per precision."""
    best = {config.name: float("inf") for config in plan}
    flops = {}
    peaks = {dtype: 0.0 for dtype in needed_peaks(plan)}
    for r in range(opts.rounds):
        for dtype in peaks:
            gflops = measure(sys.executable, ["peak", dtype], opts, opts.threads)["gflops"]
            peaks[dtype] = max(peaks[dtype], gflops)
            print(f"round {r + 1}: peak {dtype:<14} {gflops:7.0f} GFLOP/s", file=sys.stderr)
        for config in round_order(plan, r):
            out = measure(config.python, list(config.worker), opts, opts.threads)
            best[config.name] = min(best[config.name], out["seconds_per_step"])
            flops[config.name] = out["flops_per_step"]
            ms = out["seconds_per_step"] * 1e3
            print(f"round {r + 1}: {config.name:<22} {ms:7.1f} ms/step", file=sys.stderr)
    return best, flops, peaks


def speed(opts) -> None:
    """Time d3rlpy's CRR and our scripts in alternating rounds; print (and with --out write as JSON) one row
    per configuration, the best round of each."""
    native = bf16_native()
    machine = {"bf16_native": native, "cpu": cpu_model(), "threads": opts.threads}
    plan = speed_plan(opts.scripts, opts.modes, native, opts.d3rlpy_python)
    best, flops, peaks = measure_rounds(opts, plan)
    rows = [speed_record(config, best, flops, peaks, machine) for config in plan]
    setting = f"best of {opts.rounds} rounds × {opts.steps} steps"
    print(f"dataset {opts.dataset}; {opts.threads} threads; {setting}")
    print(f"CPU flags: {cpu_flags() or 'unknown'}; peaks on {PEAK_SIZE}² matmuls, best over rounds")
    print(speed_line(None))
    for record in rows:
        print(speed_line(record))
    if opts.out:
        report = {"dataset": opts.dataset, "rounds": opts.rounds, "steps": opts.steps, **machine}
        with open(opts.out, "w") as f:
            json.dump({**report, "peak_gflops": peaks, "rows": rows}, f, indent=1)


def worker(opts) -> None:
    """Inside a measurement process: print one JSON line (a peak, or one configuration's step)."""
    kind, *modes = opts.worker
    if kind == "peak":
        out = {"gflops": peak_worker(modes[0])}
    elif kind == "d3rlpy":
        out = d3rlpy_worker(opts.dataset, opts.steps, opts.warmup, int(modes[0]))
    else:
        flags = ("bf16" in modes, "compile" in modes, "nonnative" in modes)
        out = ours_worker(kind, opts.dataset, opts.steps, opts.warmup, *flags)
    print(json.dumps(out))


def default_dataset() -> str:
    """The zoo cheetah_run dataset (built on first use, ~1 minute on 2 cores)."""
    sys.path.insert(0, ROOT)
    from common.datasets import cache_dir, load_zoo

    return os.path.join(cache_dir(), load_zoo("cheetah_run").source.split(":", 1)[1] + ".hdf5")


# name: (script, flags), each at the comparison's setting
QUALITY_LEARNERS = {
    # the paper's BC: DiME (BC) at α = 1, through the M-step
    "bc": ("dime_bc", "--alpha 1"),
    # BC by plain maximum likelihood
    "bc_ml": ("crr_ls", "--alpha 1 --no-trust-region"),
    # CRR-exp with weights exp((1-α)/α·A) = exp(A) (d3rlpy's β = 1) by plain weighted maximum likelihood, as
    # d3rlpy's CRR: the d3rlpy-equivalent setting; "ls" is the paper's LS, through the M-step's trust region
    "ls_ml": ("crr_ls", "--alpha 0.5 --no-trust-region"),
    "ls": ("crr_ls", "--alpha 0.5"),
    "dime_bc": ("dime_bc", "--alpha 0.45"),
    "dime_awbc": ("dime_awbc", "--alpha 0.5"),
}
# the paper's trade-offs
DEFAULT_LEARNERS = list(QUALITY_LEARNERS)
# the offline table's other trade-offs, for each DiME's best α on a dataset (asked for by name: dime_bc_a0.9)
QUALITY_LEARNERS |= {f"dime_bc_a{a}": ("dime_bc", f"--alpha {a}") for a in (0.1, 0.5, 0.9)}
QUALITY_LEARNERS |= {f"dime_awbc_a{a}": ("dime_awbc", f"--alpha {a}") for a in (0.1, 0.9)}
# diagnostics: the maximum-likelihood learners at d3rlpy's learning rate (3e-4; ours: 1e-4, Table 3)
ML_LEARNERS = {name: learner for name, learner in QUALITY_LEARNERS.items() if name.endswith("_ml")}
QUALITY_LEARNERS |= {
    f"{name}_lr3e-4": (script, f"{flags} --lr 3e-4") for name, (script, flags) in ML_LEARNERS.items()
}


def dataset_tag(spec: str) -> str:
    """The results folder of a --datasets entry: ENV, ENV_randomF, ENV_gaitsF or ENV_<file name>."""
    env_id, _, rest = spec.partition(":")
    kind, _, value = rest.partition("=")
    if rest and kind not in ("random", "gaits"):
        return f"{env_id}_{os.path.splitext(os.path.basename(rest))[0]}"
    return env_id if not rest else f"{env_id}_{kind}{float(value):g}"


def resolve_dataset(spec: str) -> tuple[str, str, str]:
    """ENV | ENV:random=F | ENV:gaits=F | ENV:PATH -> (tag, env id, HDF5 path); zoo datasets are built on
    first use (random=F: a share F of uniform-random episodes; gaits=F: a share F of open-loop gaits)."""
    sys.path.insert(0, ROOT)
    from common.datasets import cache_dir, load_zoo

    env_id, _, rest = spec.partition(":")
    kind, _, value = rest.partition("=")
    if rest and kind not in ("random", "gaits"):
        return dataset_tag(spec), env_id, rest
    # the zoo default
    recipe = {"random_fraction": 0.1}
    if kind == "random":
        recipe = {"random_fraction": float(value)}
    if kind == "gaits":
        recipe = {"random_fraction": 0.0, "gait_fraction": float(value)}
    ds = load_zoo(env_id, **recipe)
    return dataset_tag(spec), env_id, os.path.join(cache_dir(), ds.source.split(":", 1)[1] + ".hdf5")


def evaluate_exported(path: str, env_id: str, seed: int, step: int, episodes: int) -> list[float]:
    """Returns of an exported (TorchScript) greedy policy, evaluated exactly as our offline scripts do:
    lockstep episodes of the clipped action with reset seeds from (seed, step)."""
    import numpy as np
    import torch

    sys.path.insert(0, ROOT)
    import dime_bc

    # d3rlpy exports TorchScript, which torch 2.13 deprecates
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = torch.jit.load(path)
    envs = dime_bc.make_envs(env_id, episodes)
    seeds = np.random.SeedSequence([seed, step]).generate_state(episodes)
    obs = envs.reset(seed=[int(s) for s in seeds])[0]
    returns = np.zeros(episodes)
    alive = np.ones(episodes, bool)
    while alive.any():
        with torch.no_grad():
            actions = policy(torch.as_tensor(obs, dtype=torch.float32)).clamp(-1.0, 1.0).numpy()
        obs, reward, terminated, truncated, _ = envs.step(actions)
        returns += reward * alive
        alive &= ~(terminated | truncated)
    envs.close()
    return returns.tolist()


def quality_cell(opts, tag: str, env_id: str, path: str, learner: str, seed: int) -> dict:
    """One (dataset, learner, seed) run, or its results.json when it already finished."""
    done = finished_cell(opts, tag, learner, seed)
    if done:
        return done
    cell = os.path.join(opts.out, tag, learner, f"seed_{seed}")
    os.makedirs(cell, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "MKL_NUM_THREADS": str(opts.threads)}
    log = open(os.path.join(cell, "run.log"), "w")
    print(f"{tag} {learner} seed {seed} ...", file=sys.stderr, flush=True)
    if learner == "d3rlpy_crr":
        worker = [
            "--worker",
            "d3rlpy-train",
            "--dataset",
            path,
            "--steps",
            str(opts.train_steps),
            "--cell",
            cell,
        ]
        worker += ["--eval-every", str(opts.eval_every), "--seed", str(seed)]
        command = [opts.d3rlpy_python, os.path.abspath(__file__), *worker]
        if subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode:
            sys.exit(f"error: d3rlpy training failed; see {log.name}")
        steps = sorted(int(f[len("policy_") : -3]) for f in os.listdir(cell) if f.startswith("policy_"))
        evaluations = []
        for step in steps:
            returns = evaluate_exported(
                os.path.join(cell, f"policy_{step}.pt"), env_id, seed, step, opts.eval_episodes
            )
            evaluations.append({"step": step, "returns": returns, "mean": sum(returns) / len(returns)})
        final = evaluations[-1]
        std = (sum((r - final["mean"]) ** 2 for r in final["returns"]) / len(final["returns"])) ** 0.5
        results = {"algo": learner, "env_id": env_id, "seed": seed, "dataset": {"source": path}}
        results.update(evaluations=evaluations, final={"mean": final["mean"], "std": std})
        with open(os.path.join(cell, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        return results
    script, flags = QUALITY_LEARNERS[learner]
    command = [sys.executable, f"{script}.py", "--env-id", env_id, "--dataset", path, "--seed", str(seed)]
    command += ["--output-dir", cell, "--exp-name", learner, "--total-steps", str(opts.train_steps)]
    command += ["--eval-every", str(opts.eval_every), "--eval-episodes", str(opts.eval_episodes)]
    command += ["--checkpoint-every", "0", *flags.split(), *opts.ours_flags.split()]
    if subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode:
        sys.exit(f"error: {learner} failed; see {log.name}")
    (done,) = glob.glob(os.path.join(cell, "*", "results.json"))
    return json.load(open(done))


def quality(opts) -> None:
    """Train every learner on every dataset and seed (finished cells are skipped; --summary: train nothing,
    report the finished cells); print the final returns."""
    learners = ["d3rlpy_crr", *opts.learners]
    table = {}
    for spec in opts.datasets:
        # --summary: the finished cells only, no dataset is built
        if opts.summary:
            tag = dataset_tag(spec)
            runs = {
                learner: [finished_cell(opts, tag, learner, s) for s in opts.seeds] for learner in learners
            }
        else:
            tag, env_id, path = resolve_dataset(spec)
            runs = {x: [quality_cell(opts, tag, env_id, path, x, s) for s in opts.seeds] for x in learners}
        table[tag] = {learner: [r["final"]["mean"] for r in done if r] for learner, done in runs.items()}
    best_alpha = add_best_alpha(table, len(opts.seeds))
    learners += [f"{family} best α" for family in BEST_ALPHA_FAMILIES]
    # the rows with a value
    learners = [x for x in learners if any(rows.get(x) for rows in table.values())]
    header = f"| learner | {' | '.join(table)} |"
    lines = [header, "|---" * (len(table) + 1) + "|"]
    for learner in learners:
        cells = []
        for tag in table:
            finals = table[tag][learner]
            # --summary: no finished cell yet
            if not finals:
                cells.append("–")
                continue
            mean, half = mean_ci95(finals)
            alpha = f", α = {best_alpha[tag, learner]}" if (tag, learner) in best_alpha else ""
            # one seed: no interval
            interval = f" ± {half:.1f}" if half is not None else ""
            cells.append(f"{mean:.1f}{interval} ({', '.join(f'{v:.1f}' for v in finals)}{alpha})")
        lines.append(f"| {learner} | {' | '.join(cells)} |")
    setting = f"{opts.train_steps} learner steps, {opts.eval_episodes} final episodes, seeds {opts.seeds}"
    text = f"Final return, mean ± 95 % interval (each seed's) ({setting}):\n\n" + "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(opts.out, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(opts.out, "table.json"), "w") as f:
        json.dump({"setting": setting, "final_returns": table}, f, indent=1)


# learner -> its paper α; dime_bc_a0.9 etc.: its other α
BEST_ALPHA_FAMILIES = {"dime_bc": 0.45, "dime_awbc": 0.5}


def add_best_alpha(table: dict, seeds: int) -> dict:
    """Add a "<family> best α" row per dataset: the family's α with the best mean among those finished on
    every seed, once every α of QUALITY_LEARNERS has been (else the row stays empty). Returns the α chosen."""
    chosen = {}
    for tag, rows in table.items():
        for family, paper_alpha in BEST_ALPHA_FAMILIES.items():
            names = [n for n in QUALITY_LEARNERS if n == family or n.startswith(f"{family}_a")]
            rows[f"{family} best α"] = []
            if all(len(rows.get(n, [])) == seeds for n in names):
                best = max(names, key=lambda n: sum(rows[n]) / seeds)
                rows[f"{family} best α"] = rows[best]
                chosen[tag, f"{family} best α"] = (
                    float(best[len(family) + 2 :]) if best != family else paper_alpha
                )
    return chosen


def finished_cell(opts, tag: str, learner: str, seed: int) -> dict | None:
    """A (dataset, learner, seed) cell's results.json if it finished, else None."""
    cell = os.path.join(opts.out, tag, learner, f"seed_{seed}")
    done = glob.glob(os.path.join(cell, "**", "results.json"), recursive=True)
    return json.load(open(done[0])) if done else None


def parse_args() -> argparse.Namespace:
    """The command line: speed by default, --quality for final returns; --worker inside a measurement."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", help="project/D4RL HDF5 file (default: the zoo cheetah_run dataset)")
    scripts = ["crr_ls", "dime_bc", "dime_awbc", "dime_multi", "dime_morl", "dime_finetune"]
    parser.add_argument("--scripts", nargs="+", default=scripts, choices=scripts)
    modes = ["fp32", "bf16", "compile-fp32", "compile-bf16", "bf16-nonnative"]
    parser.add_argument(
        "--modes",
        nargs="+",
        default=modes[:2],
        choices=modes,
        help="precision, --compile; bf16-nonnative: --bf16 as on a CPU without native bfloat16 (forced)",
    )
    parser.add_argument("--d3rlpy-python", default=os.path.join(ROOT, ".venv-d3rlpy", "bin", "python"))
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best is kept")
    parser.add_argument("--steps", type=int, default=200, help="timed learner steps per measurement")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before (caches, compilation)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP threads of every worker")
    parser.add_argument("--out", help="speed: also write the table as JSON here; quality: the results folder")
    parser.add_argument("--quality", action="store_true", help="compare final returns instead of speed")
    parser.add_argument("--summary", action="store_true", help="quality: tabulate finished cells, train none")
    parser.add_argument("--train-steps", type=int, default=20_000, help="quality: learner steps per run")
    parser.add_argument(
        "--datasets", nargs="+", help="quality: default cheetah_run cheetah_run:random=0.5; --summary: all"
    )
    parser.add_argument(
        "--learners", nargs="+", choices=list(QUALITY_LEARNERS), help="default: the paper's α; --summary: all"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--eval-every", type=int, default=5000, help="quality: learner steps between evaluations"
    )
    parser.add_argument("--eval-episodes", type=int, default=20, help="quality: episodes per evaluation")
    preset = "--hidden-sizes 256 256 256 --batch-size 256 --num-samples 20 --bf16"
    parser.add_argument("--ours-flags", default=preset, help="quality: flags of every run of our scripts")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    return parser.parse_args()


def quality_defaults(opts) -> None:
    """Fill in --out, --datasets and --learners of a --quality run (--summary: every one found)."""
    opts.out = opts.out or os.path.join(ROOT, "benchmarks", "results", "vs_d3rlpy_quality")
    if opts.summary and not os.path.isdir(opts.out):
        sys.exit(f"error: --out {opts.out} holds no quality cells; run --quality without --summary first")
    if opts.summary:
        found = sorted(d for d in os.listdir(opts.out) if os.path.isdir(os.path.join(opts.out, d)))
        opts.datasets = opts.datasets or found
        opts.learners = opts.learners or list(QUALITY_LEARNERS)
    opts.datasets = opts.datasets or ["cheetah_run", "cheetah_run:random=0.5"]
    opts.learners = opts.learners or DEFAULT_LEARNERS


def main() -> None:
    opts = parse_args()
    # inside a quality cell, in d3rlpy's venv
    if opts.worker == ["d3rlpy-train"]:
        return d3rlpy_train_worker(opts.dataset, opts.steps, opts.eval_every, opts.seed, opts.cell)
    if opts.worker:
        return worker(opts)
    if not os.path.exists(opts.d3rlpy_python) and not opts.summary:
        sys.exit(f"error: no d3rlpy interpreter at {opts.d3rlpy_python}; make one (benchmarks/README.md)")
    if opts.quality:
        quality_defaults(opts)
        return quality(opts)
    opts.dataset = opts.dataset or default_dataset()
    speed(opts)


if __name__ == "__main__":
    main()
