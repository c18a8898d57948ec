"""Finetuning curves (paper Fig. 3/10): α ∈ {0, 0.25, 0.5, 1, learned} from a zoo teacher, per task.

    python benchmarks/finetune_curves.py --tasks cartpole_swingup cheetah_run --env-steps 200000 --workers 2

Runs the unchanged `dime_finetune.py` once per task, trade-off and seed (one process per run, --workers at a
time, one thread each; finished runs are reused), then plots evaluation return against env steps with the
teacher's return as a dashed line, and the learned α over time, to --figure; the final returns and
commands go to --json. The claim to check: the learned α ends above the teacher and learns faster than α = 0.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = "--hidden-sizes 256 256 256 --batch-size 256"
TRADEOFFS = ["0", "0.25", "0.5", "1", "learned"]


def jobs(opts) -> list[dict]:
    out = []
    for task in opts.tasks:
        for seed in opts.seeds:
            for tradeoff in opts.tradeoffs:
                name = f"{task}_{opts.method}_{tradeoff}_s{seed}"
                alpha = "--alpha 0.5 --learn-alpha" if tradeoff == "learned" else f"--alpha {tradeoff}"
                flags = f"--env-id {task} --method {opts.method} {alpha} --seed {seed} --total-env-steps "
                flags += f"{opts.env_steps} --eval-every {opts.eval_every} --checkpoint-every 0 {opts.preset}"
                command = f"python dime_finetune.py {flags} --output-dir {os.path.join(opts.out, name)}"
                out.append(dict(task=task, seed=seed, tradeoff=tradeoff, name=name, command=command))
    return out


def results_of(job: dict, opts) -> dict | None:
    found = glob.glob(os.path.join(opts.out, job["name"], "*", "results.json"))
    return json.load(open(found[0])) if found else None


def run(job: dict, opts) -> None:
    if results_of(job, opts) is None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MUJOCO_GL": "disable"}
        os.makedirs(opts.out, exist_ok=True)
        with open(os.path.join(opts.out, f"{job['name']}.log"), "w") as f:
            argv = [sys.executable, *job["command"].split()[1:]]  # "python" of the printed command
            subprocess.run(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    result = results_of(job, opts)
    print(f"{job['name']}: {result['final']['mean']:.1f}" if result else f"{job['name']}: failed", flush=True)


def plot(opts, todo: list[dict]) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2,
        len(opts.tasks),
        figsize=(5 * len(opts.tasks), 6),
        squeeze=False,
        height_ratios=(3, 1),
        sharex="col",
    )
    finals = {}
    for col, task in enumerate(opts.tasks):
        ax, ax_alpha = axes[0][col], axes[1][col]
        for tradeoff in opts.tradeoffs:
            runs = [
                r
                for j in todo
                if j["task"] == task and j["tradeoff"] == tradeoff
                for r in [results_of(j, opts)]
                if r
            ]
            if not runs:
                continue
            steps = [e["env_steps"] for e in runs[0]["evaluations"]]
            curves = np.array([[e["mean"] for e in r["evaluations"]][: len(steps)] for r in runs])
            label = "learned α" if tradeoff == "learned" else f"α = {tradeoff}"
            ax.plot(steps, curves.mean(0), label=label, lw=2 if tradeoff == "learned" else 1)
            finals[f"{task} {label}"] = [r["final"]["mean"] for r in runs]
            if tradeoff == "learned":
                ax_alpha.plot(steps, np.mean([[e["alpha"] for e in r["evaluations"]] for r in runs], 0))
            teacher = np.mean([r["teacher"]["mean"] for r in runs])
        ax.axhline(teacher, color="k", ls="--", label="teacher")
        ax.set(title=f"{task} ({opts.method})", ylabel="episode return")
        ax_alpha.set(xlabel="env steps", ylabel="learned α", ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(opts.figure, dpi=110)
    plt.close(fig)
    return finals


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=["cartpole_swingup", "cheetah_run"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--method", choices=["dime", "ls"], default="dime")
    parser.add_argument("--tradeoffs", nargs="+", choices=TRADEOFFS, default=TRADEOFFS, help="α of the runs")
    parser.add_argument("--env-steps", type=int, default=200_000, help="environment steps per run")
    parser.add_argument("--eval-every", type=int, default=5_000, help="learner steps between evaluations")
    parser.add_argument("--preset", default=PRESET, help="network and batch flags of every run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "finetune_curves"))
    parser.add_argument("--figure", default=os.path.join(ROOT, "docs", "figures", "finetune_curves.png"))
    parser.add_argument("--json", default=os.path.join(ROOT, "docs", "figures", "finetune_curves.json"))
    parser.add_argument("--plot-only", action="store_true", help="plot the finished runs, start none")
    opts = parser.parse_args()
    todo = jobs(opts)
    if not opts.plot_only:
        print(f"{len(todo)} runs, {opts.workers} at a time", flush=True)
        with ThreadPoolExecutor(opts.workers) as pool:
            list(pool.map(lambda job: run(job, opts), todo))
    todo = [j for j in todo if results_of(j, opts)]
    finals = plot(opts, todo)
    with open(opts.json, "w") as f:
        json.dump({"final_returns": finals, "commands": [j["command"] for j in todo]}, f, indent=1)
    for key, values in finals.items():
        print(f"{key}: {np.mean(values):.1f} ± {np.std(values):.1f}")


if __name__ == "__main__":
    main()
