"""Run every (script, task, α, seed) cell of a grid, each as its own process of the unchanged script.

    python benchmarks/sweep.py benchmarks/grids/offline_table.yaml                  # local, one cell per core
    python benchmarks/sweep.py --scripts crr_ls dime_bc --env-ids cartpole_swingup --alphas 0.3 0.5 \\
        --seeds 1 2 --flags "--total-steps 2000 --hidden-sizes 64 64" --out runs/sweeps/try
    python benchmarks/sweep.py GRID --launcher slurm --partition gpu --gpus-per-node 1 --timeout-min 240
    python benchmarks/aggregate.py runs/sweeps/offline_table                        # tables and plots

A grid (YAML or JSON; docs/sweeps.md) names scripts, env ids, α values, seeds and extra flags, at the top
level and/or per entry of `runs:`. Every cell gets a directory of its own,
    <out>/<name>/<env_id>/alpha_<α>/seed_<seed>/   (no alpha_ level for runs without α, e.g. dime_multi)
passed as --output-dir (and the entry's name as --exp-name), so the script's timestamped run directory is
found by globbing the cell directory. The command's output goes to <cell>/sweep.log.

Decisions:
- A cell with a results.json is finished and skipped: re-running a sweep after a failure or a preemption
  runs only what is missing. A cell with a checkpoint.pt but no results.json is continued with the same
  command plus `--resume <newest checkpoint.pt>` (the scripts refuse a resume whose flags disagree with the
  checkpoint's, except the few they let change, such as --total-steps). Any other cell starts afresh.
- `local` runs --workers cells at a time (default: the number of cores) with OMP_NUM_THREADS and
  MKL_NUM_THREADS set to 1 when more than one runs, so cells do not oversubscribe the cores.
- `slurm` submits the cells to be run as one submitit job array; each job runs the same function as the
  local launcher (`run_cell`), which decides skip/resume when the job starts, with OMP_NUM_THREADS set to
  --cpus-per-task. A job that times out or is preempted is requeued by submitit and resumes from the
  checkpoint its cell wrote (set --checkpoint-every in the grid's flags). The sweep exits once the array is
  submitted (--wait: after the jobs end, with the summary). submitit is imported only by this launcher.
- A failing cell never stops the others; the summary lists ran, skipped and failed cells with their logs
  and the exit code is 1 when any failed. A bad grid is one line on stderr and exit code 2.
"""

import argparse
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("dime_bc", "dime_awbc", "crr_ls", "dime_multi", "dime_finetune", "dime_morl")
NO_ALPHA = {"dime_multi"}  # trade-off conditioned: takes no --alpha; the grid's α values are ignored for it
NEEDS_ALPHA = {"dime_bc", "dime_awbc", "crr_ls"}  # --alpha has no default
SET_BY_SWEEP = {"--seed", "--env-id", "--alpha", "--output-dir", "--exp-name", "--resume"}
GRID_KEYS = {"out", "scripts", "env_ids", "alphas", "seeds", "flags", "runs"}
RUN_KEYS = {"name", "script", "env_ids", "alphas", "seeds", "flags"}
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")  # names and env ids become directory names
LOG = "sweep.log"


class GridError(Exception):
    """Bad grid or launcher input: reported as one line on stderr with exit code 2."""


@dataclass(frozen=True)
class Cell:
    """One run: an entry's name and script, a task, a trade-off (None: no --alpha), a seed, its flags."""

    name: str
    script: str
    env_id: str
    alpha: float | None
    seed: int
    flags: tuple[str, ...]
    directory: str

    def label(self) -> str:
        alpha = "" if self.alpha is None else f" α={self.alpha!r}"
        return f"{self.name} {self.env_id}{alpha} seed={self.seed}"


# ---------------------------------------------------------------------------------------------- grid
def read_grid(path: str) -> dict:
    """A grid file: JSON when it ends in .json, YAML otherwise (PyYAML imported only then)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise GridError(
            f"cannot read the grid file {path} ({e.strerror}); pass an existing YAML/JSON file"
        ) from None
    try:
        if path.endswith(".json"):
            grid = json.loads(text)
        else:
            import yaml

            grid = yaml.safe_load(text)
    except Exception as e:  # any parser's error is the same user error
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GridError(f"cannot parse the grid file {path}: {first}") from None
    if not isinstance(grid, dict):
        raise GridError(f"the grid file {path} must hold a mapping of keys ({', '.join(sorted(GRID_KEYS))})")
    return grid


def check_keys(entry: dict, allowed: set, where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise GridError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def as_list(value, kind, key: str, where: str) -> list:
    """A scalar or a list of `kind` values (int for seeds, float for α, str for names)."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise GridError(f"{where}: {key} is empty; give at least one value")
    accepted = (int, float) if kind is float else (kind,)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, accepted):
            raise GridError(f"{where}: {key} must be {kind.__name__} values, got {v!r}")
    return [kind(v) for v in values]


def as_flags(value, where: str) -> list[str]:
    """Flags as one shell-quoted string or a list of arguments; the cell's own flags are refused."""
    if value is None:
        return []
    if isinstance(value, str):
        flags = shlex.split(value)
    elif isinstance(value, list):
        flags = [str(v) for v in value]
    else:
        raise GridError(f"{where}: flags must be a string or a list, got {value!r}")
    for flag in flags:
        if flag.split("=")[0] in SET_BY_SWEEP:
            raise GridError(
                f"{where}: {flag.split('=')[0]} is set by the sweep; use name, env_ids, alphas or seeds"
            )
    return flags


def script_name(value, where: str) -> str:
    script = value[:-3] if isinstance(value, str) and value.endswith(".py") else value
    if script not in SCRIPTS:
        raise GridError(f"{where}: unknown script {value!r}; choose from {', '.join(SCRIPTS)}")
    return script


def run_entries(grid: dict) -> list[dict]:
    """The grid's entries, each with every setting filled from the top level where it gives none."""
    check_keys(grid, GRID_KEYS, "grid")
    runs = grid.get("runs") or []
    if not isinstance(runs, list):
        raise GridError("grid: runs must be a list of entries (mappings with a script)")
    scripts = grid.get("scripts") or []
    scripts = scripts if isinstance(scripts, list) else [scripts]
    entries = [{"script": s} for s in scripts] + runs
    if not entries:
        raise GridError("grid: no scripts; give scripts (or --scripts) or runs entries")
    filled = []
    for i, entry in enumerate(entries):
        where = f"runs[{i - len(scripts)}]" if i >= len(scripts) else "grid"
        if not isinstance(entry, dict) or "script" not in entry:
            raise GridError(f"{where}: each entry must be a mapping with a script")
        check_keys(entry, RUN_KEYS, where)
        script = script_name(entry["script"], where)
        alphas = entry["alphas"] if "alphas" in entry else grid.get("alphas")
        env_ids = entry.get("env_ids", grid.get("env_ids"))
        if env_ids is None:
            raise GridError(f"{where}: no env_ids for {script}; give env_ids (or --env-ids)")
        name = entry.get("name", script)
        if not isinstance(name, str) or not SAFE_NAME.match(name):
            raise GridError(f"{where}: name {name!r} must be letters, digits and _.+- only")
        if alphas is None and script in NEEDS_ALPHA:
            raise GridError(f"{where}: {script} needs --alpha; give alphas")
        if script in NO_ALPHA:
            alphas = None
        filled.append(
            dict(
                name=name,
                script=script,
                env_ids=as_list(env_ids, str, "env_ids", where),
                alphas=None if alphas is None else as_list(alphas, float, "alphas", where),
                seeds=as_list(entry.get("seeds", grid.get("seeds", [1])), int, "seeds", where),
                flags=as_flags(grid.get("flags"), "grid") + as_flags(entry.get("flags"), where),
            )
        )
    return filled


def cell_dir(out: str, name: str, env_id: str, alpha: float | None, seed: int) -> str:
    """<out>/<name>/<env_id>/alpha_<α>/seed_<seed>; α written as repr(float) (0.45, 1.0)."""
    parts = [out, name, env_id] + ([] if alpha is None else [f"alpha_{alpha!r}"]) + [f"seed_{seed}"]
    return os.path.join(*parts)


def expand(grid: dict, out: str) -> list[Cell]:
    """Every cell of the grid, in order: entry, env id, α, seed; two entries may not share a cell."""
    cells = []
    seen = set()
    for entry in run_entries(grid):
        for env_id in entry["env_ids"]:
            if not SAFE_NAME.match(env_id):
                raise GridError(f"env id {env_id!r} must be letters, digits and _.+- only")
            for alpha in entry["alphas"] or [None]:
                for seed in entry["seeds"]:
                    directory = cell_dir(os.path.abspath(out), entry["name"], env_id, alpha, seed)
                    if directory in seen:
                        raise GridError(f"two cells share {directory}; give the entries different names")
                    seen.add(directory)
                    flags = tuple(entry["flags"])
                    cells.append(Cell(entry["name"], entry["script"], env_id, alpha, seed, flags, directory))
    return cells


# ---------------------------------------------------------------------------------------------- one cell
def finished(cell: Cell) -> str | None:
    """The cell's results.json, if a run of it finished."""
    return results_in(cell.directory)


def results_in(directory: str) -> str | None:
    """The newest results.json of the run directories in `directory` (a script's --output-dir)."""
    found = sorted(glob.glob(os.path.join(glob.escape(directory), "*", "results.json")))
    return found[-1] if found else None


def run_logged(command: str, directory: str) -> dict | None:
    """Run a printed command line (`python SCRIPT.py ... --output-dir DIRECTORY`) on one thread, without
    rendering, unless a run in DIRECTORY finished; its output goes to DIRECTORY.log. Returns the run's
    results (None if it failed). For the benchmarks that run their own jobs (offline_table, finetune_curves).
    """
    if results_in(directory) is None:
        env = {**cell_env(1), "MUJOCO_GL": "disable"}
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        with open(f"{directory}.log", "w") as f:
            argv = [sys.executable, *command.split()[1:]]  # "python" of the printed command
            subprocess.run(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    found = results_in(directory)
    if found is None:
        return None
    with open(found) as f:
        return json.load(f)


def last_checkpoint(cell: Cell) -> str | None:
    """The newest checkpoint.pt in the cell's run directories, if any."""
    found = glob.glob(os.path.join(glob.escape(cell.directory), "*", "checkpoint.pt"))
    return max(found, key=os.path.getmtime) if found else None


def cell_command(cell: Cell) -> list[str]:
    """The script's command line; with `--resume` when the cell left a checkpoint and no results."""
    command = [sys.executable, os.path.join(ROOT, f"{cell.script}.py"), "--env-id", cell.env_id]
    command += ["--seed", str(cell.seed)] + ([] if cell.alpha is None else ["--alpha", repr(cell.alpha)])
    command += ["--output-dir", cell.directory, "--exp-name", cell.name, *cell.flags]
    checkpoint = None if finished(cell) else last_checkpoint(cell)
    return command + (["--resume", checkpoint] if checkpoint else [])


def cell_env(threads: int | None) -> dict:
    """The environment of a cell: this one, with OMP/MKL threads pinned when `threads` is given."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_cell(cell: Cell, threads: int | None = None) -> dict:
    """Run one cell (unless finished), appending its output to <cell>/sweep.log; never raises.

    Returns {"cell", "status": ran|skipped|failed, "returncode", "log", "seconds"}."""
    log = os.path.join(cell.directory, LOG)
    if finished(cell):
        return dict(cell=cell, status="skipped", returncode=0, log=log, seconds=0.0)
    start = time.time()
    returncode = 1
    try:
        os.makedirs(cell.directory, exist_ok=True)
        command = cell_command(cell)
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(command)}\n")
            f.flush()
            done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=cell_env(threads))
            returncode = done.returncode
    except OSError as e:
        print(f"cannot run {cell.label()}: {e}", file=sys.stderr, flush=True)
    status = "ran" if returncode == 0 and finished(cell) else "failed"
    return dict(cell=cell, status=status, returncode=returncode, log=log, seconds=time.time() - start)


class CellJob:
    """What a submitit job runs: `run_cell`; on timeout or preemption it requeues itself, and the
    requeued job resumes the cell from its checkpoint (run_cell builds the command when it starts)."""

    def __init__(self, threads: int | None):
        self.threads = threads

    def __call__(self, cell: Cell) -> dict:
        return run_cell(cell, self.threads)

    def checkpoint(self, cell: Cell):
        import submitit

        return submitit.helpers.DelayedSubmission(CellJob(self.threads), cell)


# ---------------------------------------------------------------------------------------------- launchers
def progress_line(i: int, n: int, outcome: dict) -> str:
    return f"[{i}/{n}] {outcome['status']}: {outcome['cell'].label()} ({outcome['seconds']:.0f} s)"


def launch_local(cells: list[Cell], workers: int) -> list[dict]:
    """A pool of `workers` threads, each waiting on one cell's process."""
    threads = 1 if workers > 1 and len(cells) > 1 else None
    outcomes = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(run_cell, cell, threads) for cell in cells]
        for i, future in enumerate(as_completed(futures), 1):
            outcomes.append(future.result())
            print(progress_line(i, len(cells), outcomes[-1]), flush=True)
    return outcomes


def slurm_parameters(opts) -> dict:
    """submitit's update_parameters: generic ones, then slurm_* ones (--slurm KEY=VALUE)."""
    params = dict(name="dime-sweep", timeout_min=opts.timeout_min, cpus_per_task=opts.cpus_per_task)
    params.update(gpus_per_node=opts.gpus_per_node, mem_gb=opts.mem_gb, slurm_partition=opts.partition)
    params.update(slurm_array_parallelism=opts.array_parallelism)
    for item in opts.slurm or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GridError(f"--slurm {item}: give KEY=VALUE, e.g. --slurm account=myproject")
        params[f"slurm_{key}"] = int(value) if value.isdigit() else value
    return {k: v for k, v in params.items() if v is not None}


def launch_slurm(cells: list[Cell], out: str, opts) -> list[dict] | None:
    """One submitit job array; waits for the jobs with --wait (always on the local/debug clusters)."""
    try:
        import cloudpickle
        import submitit
    except ImportError:
        raise GridError("the slurm launcher needs submitit: pip install submitit==1.5.4") from None
    if __name__ != "__main__":  # jobs unpickle this module by value: benchmarks/ need not be importable
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        executor = submitit.AutoExecutor(folder=os.path.join(out, "submitit", "%j"), cluster=opts.cluster)
    except RuntimeError as e:  # no srun/sbatch on this machine
        raise GridError(f"{e}; use --cluster local to run the jobs on this machine") from None
    try:
        executor.update_parameters(**slurm_parameters(opts))
    except (ValueError, TypeError) as e:
        raise GridError(f"slurm parameters: {str(e).splitlines()[0]}") from None
    try:
        jobs = executor.map_array(CellJob(opts.cpus_per_task), cells)
    except (OSError, subprocess.CalledProcessError) as e:  # no sbatch here, or sbatch refused the array
        raise GridError(f"cannot submit to {executor.cluster}: {str(e).strip().splitlines()[0]}") from None
    print(f"submitted {len(jobs)} jobs ({jobs[0].job_id} ...) on {executor.cluster}", flush=True)
    if not (opts.wait or executor.cluster in ("local", "debug")):
        return None
    outcomes = []
    for i, (job, cell) in enumerate(zip(jobs, cells), 1):
        try:
            outcomes.append(job.result())
        except Exception as e:  # the job died outside run_cell (node failure, out of requeues, cancelled)
            print(f"job {job.job_id}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}")
            outcomes.append(
                dict(cell=cell, status="failed", returncode=None, log=str(job.paths.stderr), seconds=0)
            )
        print(progress_line(i, len(cells), outcomes[-1]), flush=True)
    return outcomes


def sweep(cells: list[Cell], launcher: str = "local", workers: int | None = None, out: str = "", opts=None):
    """Skip finished cells, launch the rest; returns {"ran", "skipped", "failed"}: lists of outcomes,
    or None after a slurm submission that is not waited for."""
    skipped = [
        dict(cell=c, status="skipped", log=os.path.join(c.directory, LOG)) for c in cells if finished(c)
    ]
    todo = [c for c in cells if not finished(c)]
    resumed = sum(last_checkpoint(c) is not None for c in todo)
    workers = workers or os.cpu_count() or 1
    how = f"{workers} at a time" if launcher == "local" else "as a submitit job array"
    print(f"{len(cells)} cells: {len(skipped)} finished, {len(todo)} to run ({resumed} resumed), {how}")
    outcomes = []
    if todo and launcher == "local":
        outcomes = launch_local(todo, workers)
    elif todo:
        outcomes = launch_slurm(todo, out, opts)
        if outcomes is None:
            return None
    summary = {"ran": [], "skipped": [], "failed": []}
    for outcome in skipped + outcomes:
        summary[outcome["status"]].append(outcome)
    return summary


def print_summary(summary: dict) -> None:
    print(f"ran {len(summary['ran'])}, skipped {len(summary['skipped'])}, failed {len(summary['failed'])}")
    for outcome in summary["failed"]:
        code = outcome.get("returncode")
        print(f"failed (exit {code}): {outcome['cell'].label()}; log: {outcome['log']}")


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("grid", nargs="?", help="grid file (.yaml/.yml or .json); or give --scripts etc.")
    grid = parser.add_argument_group("grid (replace the grid file's top-level values)")
    grid.add_argument("--scripts", nargs="+", help=f"scripts to run: {', '.join(SCRIPTS)}")
    grid.add_argument("--env-ids", nargs="+", help="tasks, e.g. cartpole_swingup cheetah_run")
    grid.add_argument("--alphas", nargs="+", type=float, help="trade-offs α (not passed to dime_multi)")
    grid.add_argument("--seeds", nargs="+", type=int, help="seeds (default 1)")
    grid.add_argument(
        "--flags",
        help="flags appended to every command after the grid's (later ones win); one flag: --flags=--no-cuda",
    )
    grid.add_argument("--out", help="sweep directory (default: the grid's out, else runs/sweeps/<grid name>)")
    run = parser.add_argument_group("launcher")
    run.add_argument("--launcher", choices=("local", "slurm"), default="local", help="default: %(default)s")
    run.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="local: cells at a time (default: cores)"
    )
    run.add_argument(
        "--dry-run", action="store_true", help="print the commands of the cells to run, run none"
    )
    slurm = parser.add_argument_group("slurm (through submitit; one job array, one cell per job)")
    slurm.add_argument(
        "--cluster",
        choices=("slurm", "local", "debug"),
        default="slurm",
        help="submitit cluster: local/debug run the same jobs on this machine",
    )
    slurm.add_argument(
        "--timeout-min",
        type=int,
        default=60,
        help="minutes per job (default: %(default)s); a timed-out job is requeued and resumes",
    )
    slurm.add_argument(
        "--cpus-per-task",
        type=int,
        default=1,
        help="CPUs per job, also its OMP_NUM_THREADS (default: %(default)s)",
    )
    slurm.add_argument("--gpus-per-node", type=int, help="GPUs per job")
    slurm.add_argument("--mem-gb", type=int, help="memory per job in GB")
    slurm.add_argument("--partition", help="SLURM partition")
    slurm.add_argument("--array-parallelism", type=int, help="at most this many jobs of the array at once")
    slurm.add_argument(
        "--slurm",
        action="append",
        metavar="KEY=VALUE",
        help="any other sbatch option, e.g. --slurm account=myproject --slurm qos=high",
    )
    slurm.add_argument("--wait", action="store_true", help="wait for the jobs and print the summary")
    return parser.parse_args(argv)


def build_grid(opts) -> tuple[dict, str]:
    """The grid (file, then command-line values) and the sweep directory."""
    grid = read_grid(opts.grid) if opts.grid else {}
    for key in ("scripts", "env_ids", "alphas", "seeds"):
        if getattr(opts, key) is not None:
            grid[key] = getattr(opts, key)
    if opts.flags:
        grid["flags"] = as_flags(grid.get("flags"), "grid") + as_flags(opts.flags, "--flags")
    stem = os.path.splitext(os.path.basename(opts.grid))[0] if opts.grid else "sweep"
    out = opts.out or grid.pop("out", None) or os.path.join("runs", "sweeps", stem)
    grid.pop("out", None)
    if not isinstance(out, str):
        raise GridError(f"grid: out must be a directory path, got {out!r}")
    return grid, os.path.abspath(out)


def main(argv=None) -> int:
    opts = parse_args(argv)
    try:
        grid, out = build_grid(opts)
        cells = expand(grid, out)
        if opts.dry_run:
            todo = [c for c in cells if not finished(c)]
            print(f"{len(cells)} cells, {len(todo)} to run in {out}:")
            print("\n".join(shlex.join(cell_command(c)) for c in todo))
            return 0
        summary = sweep(cells, opts.launcher, opts.workers, out, opts)
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if summary is None:
        print(f"re-run this command when the jobs have ended: finished cells are skipped; results in {out}")
        return 0
    print_summary(summary)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
