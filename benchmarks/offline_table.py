"""The shape of the paper's Table 2 on local zoo datasets: BC, LS, DiME (BC), DiME (AWBC), best α, multi.

    python benchmarks/offline_table.py --tasks cartpole_swingup cheetah_run --seeds 1 2 --workers 2

Per task and seed it runs the unchanged scripts (one process per run, --workers at a time, one thread
each): BC (`crr_ls.py --alpha 1`), LS, DiME (BC) and DiME (AWBC) over --alphas (plus the paper's fixed
choices 0.3, 0.45, 0.5), and `dime_multi.py` for both variants evaluated at the same trade-offs. Finished
runs are reused, so an interrupted benchmark continues where it stopped. It prints a markdown table (mean ±
std over seeds of the final return), writes it with the commands and wall times to --table, the raw
numbers to --json, and a plot of final return against α per task to --figure.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = "--hidden-sizes 256 256 256 --batch-size 256 --num-samples 20"
FIXED = {"ls": 0.3, "dime_bc": 0.45, "dime_awbc": 0.5}  # the paper's fixed trade-offs (Table 2)
SCRIPT = {"bc": "crr_ls", "ls": "crr_ls", "dime_bc": "dime_bc", "dime_awbc": "dime_awbc"}
NAMES = {"bc": "BC", "ls": "LS (CRR)", "dime_bc": "DiME (BC)", "dime_awbc": "DiME (AWBC)"}


def jobs(opts) -> list[dict]:
    """One entry per run: method, α (None for multi), variant, task, seed, its command and directory."""
    out = []
    for task in opts.tasks:
        for seed in opts.seeds:
            runs = [("bc", 1.0, None)]
            for method, fixed in FIXED.items():
                runs += [(method, alpha, None) for alpha in sorted({*opts.alphas, fixed})]
            runs += [("multi", None, variant) for variant in ("bc", "awbc")]
            for method, alpha, variant in runs:
                name = f"{task}_{method}_{variant or alpha}_s{seed}"
                script = "dime_multi" if method == "multi" else SCRIPT[method]
                flags = f"--env-id {task} --seed {seed} --total-steps {opts.steps} --eval-every {opts.steps}"
                flags += f" --eval-episodes {opts.episodes} --checkpoint-every 0 {opts.preset}"
                if method == "multi":
                    flags += f" --variant {variant} --eval-alphas {' '.join(map(str, eval_alphas(opts)))}"
                else:
                    flags += f" --alpha {alpha}"
                command = f"python {script}.py {flags} --output-dir {os.path.join(opts.out, name)}"
                out.append(dict(method=method, alpha=alpha, variant=variant, task=task, seed=seed, name=name))
                out[-1]["command"] = command
    return out


def eval_alphas(opts) -> list[float]:
    return sorted({*opts.alphas, *FIXED.values(), 1.0})


def results_of(job: dict, opts) -> dict | None:
    found = glob.glob(os.path.join(opts.out, job["name"], "*", "results.json"))
    return json.load(open(found[0])) if found else None


def run(job: dict, opts) -> None:
    if results_of(job, opts) is None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MUJOCO_GL": "disable"}
        log = os.path.join(opts.out, f"{job['name']}.log")
        os.makedirs(opts.out, exist_ok=True)
        with open(log, "w") as f:
            argv = [sys.executable, *job["command"].split()[1:]]  # "python" of the printed command
            done = subprocess.run(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        if done.returncode:
            print(f"failed ({done.returncode}): {job['command']} (log: {log})", flush=True)
            return
    result = results_of(job, opts)
    best = result["best"] if job["method"] == "multi" else result["final"]
    print(f"{job['name']}: {best['mean']:.1f} ({result['wall_time_s']:.0f} s)", flush=True)


def summarise(opts) -> dict:
    """Per task and column: final return per seed; per method: return per α (mean over seeds)."""
    table, curves, wall = {}, {}, {}
    for job in jobs(opts):
        result = results_of(job, opts)
        if result is None:
            continue
        task, method = job["task"], job["method"]
        key = f"multi_{job['variant']}" if method == "multi" else method
        wall.setdefault(key, []).append(result["wall_time_s"])
        finals = result["final"] if method == "multi" else [result["final"]]
        for final in finals:
            curves.setdefault(task, {}).setdefault(key, {}).setdefault(final["alpha"], []).append(
                final["mean"]
            )
        if method in FIXED and job["alpha"] == FIXED[method] or method == "bc":
            table.setdefault(task, {}).setdefault(key, []).append(result["final"]["mean"])
    for task, methods in curves.items():  # best α per task: the α with the best mean over seeds
        for key, by_alpha in methods.items():
            if key == "bc":
                continue
            alpha = max(by_alpha, key=lambda a: np.mean(by_alpha[a]))
            table[task][f"{key}_best"] = by_alpha[alpha]
            table[task][f"{key}_best_alpha"] = alpha
    return {"table": table, "curves": curves, "wall_time_s": {k: float(np.mean(v)) for k, v in wall.items()}}


COLUMNS = [
    ("bc", "BC"),
    ("ls", "LS α=.3"),
    ("dime_bc", "DiME (BC) α=.45"),
    ("dime_awbc", "DiME (AWBC) α=.5"),
    ("ls_best", "LS best α"),
    ("dime_bc_best", "DiME (BC) best α"),
    ("dime_awbc_best", "DiME (AWBC) best α"),
    ("multi_bc_best", "DiME (BC) multi"),
    ("multi_awbc_best", "DiME (AWBC) multi"),
]


def markdown(summary: dict) -> str:
    table = summary["table"]
    lines = ["| task | " + " | ".join(c for _, c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    means = {k: [] for k, _ in COLUMNS}
    for task, row in table.items():
        cells = []
        for key, _ in COLUMNS:
            values = row.get(key)
            if values is None:
                cells.append("-")
                continue
            means[key].append(np.mean(values))
            alpha = f" (α={row[key + '_alpha']})" if key + "_alpha" in row else ""
            cells.append(f"{np.mean(values):.0f} ± {np.std(values):.0f}{alpha}")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines.append(
        "| **mean** | " + " | ".join(f"{np.mean(v):.0f}" if v else "-" for v in means.values()) + " |"
    )
    return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary["curves"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.5), squeeze=False)
    labels = {"ls": "LS", "dime_bc": "DiME (BC)", "dime_awbc": "DiME (AWBC)", "multi_bc": "DiME (BC) multi"}
    labels["multi_awbc"] = "DiME (AWBC) multi"
    for ax, task in zip(axes[0], tasks):
        for key, label in labels.items():
            by_alpha = summary["curves"][task].get(key)
            if by_alpha:
                alphas = sorted(by_alpha)
                style = "--" if key.startswith("multi") else "-"
                ax.plot(alphas, [np.mean(by_alpha[a]) for a in alphas], style, marker="o", ms=3, label=label)
        if "bc" in summary["curves"][task]:
            ax.axhline(np.mean(summary["curves"][task]["bc"][1.0]), color="k", lw=1, label="BC")
        ax.set(title=task, xlabel="trade-off α (weight of the BC term)", ylabel="final return")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=["cartpole_swingup", "cheetah_run"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--steps", type=int, default=10_000, help="learner steps per run")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes")
    parser.add_argument("--preset", default=PRESET, help="network and batch flags of every run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "offline_table"))
    parser.add_argument("--table", default=os.path.join(ROOT, "docs", "figures", "offline_table.md"))
    parser.add_argument("--json", default=os.path.join(ROOT, "docs", "figures", "offline_table.json"))
    parser.add_argument("--figure", default=os.path.join(ROOT, "docs", "figures", "offline_alpha.png"))
    opts = parser.parse_args()
    todo, start = jobs(opts), time.time()
    print(f"{len(todo)} runs, {opts.workers} at a time", flush=True)
    with ThreadPoolExecutor(opts.workers) as pool:
        list(pool.map(lambda job: run(job, opts), todo))
    summary = summarise(opts)
    if not summary["table"]:
        return "no run finished; see the logs in " + opts.out
    text = markdown(summary)
    print(text)
    commands = "\n".join(job["command"] for job in todo)
    walls = ", ".join(f"{k} {v:.0f} s" for k, v in summary["wall_time_s"].items())
    with open(opts.table, "w") as f:
        f.write(
            f"{text}\n\nMean wall time per run (one thread each): {walls}. Benchmark wall time: "
            f"{time.time() - start:.0f} s.\n\nCommands:\n\n```\n{commands}\n```\n"
        )
    with open(opts.json, "w") as f:
        json.dump({**summary, "commands": [job["command"] for job in todo]}, f, indent=1, default=str)
    plot(summary, opts.figure)


if __name__ == "__main__":
    sys.exit(main())
