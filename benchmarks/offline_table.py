"""The shape of the paper's Table 2 on local zoo datasets: BC, LS, DiME (BC), DiME (AWBC), best α, multi.

    python benchmarks/offline_table.py --tasks cartpole_swingup cheetah_run --seeds 1 2 --workers 2
    python benchmarks/offline_table.py --grid benchmarks/grids/offline_table_cpu.yaml   # tabulate, run none

Per task and seed it runs the unchanged scripts (one process per run, --workers at a time, one thread
each): BC (`crr_ls.py --alpha 1`), LS, DiME (BC) and DiME (AWBC) over --alphas (plus the paper's fixed
choices 0.3, 0.45, 0.5), and `dime_multi.py` for both variants evaluated at the same trade-offs. Finished
runs are reused, so an interrupted benchmark continues where it stopped. It prints a markdown table (mean ±
std over seeds of the final return), writes it with the commands and wall times to --table, the raw
numbers to --json, and a plot of final return against α per task to --figure.

--grid GRID reads the finished cells of a sweep grid (run by benchmarks/sweep.py) instead of running its
own: entries of dime_bc at α = 1 are BC, other dime_bc entries DiME (BC), crr_ls LS, dime_awbc DiME (AWBC),
dime_multi the conditioned runs of its --variant. Every cell is mean ± 95 % interval over seeds (Student t),
and the paper's claims are checked on same-seed differences averaged over tasks (the claims need every
task; a best α needs all of the grid's seeds at that α). Unfinished cells are left out and counted. Its
outputs are named after the grid (docs/figures/GRID.md, GRID.json, GRID_alpha.png), so no grid's table
overwrites another's.
"""

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import sweep  # benchmarks/sweep.py: the grid runner; its cells are read here
from aggregate import mean_ci95, paired_verdict, verdict_text  # the Student t every table here uses

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
    found = sweep.results_in(os.path.join(opts.out, job["name"]))
    return json.load(open(found)) if found else None


def run(job: dict, opts) -> None:
    result = sweep.run_logged(job["command"], os.path.join(opts.out, job["name"]))
    if result is None:
        print(f"failed: {job['command']} (log: {os.path.join(opts.out, job['name'])}.log)", flush=True)
        return
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


def header(titles: list[str]) -> list[str]:
    """A markdown table's first two lines."""
    return ["| " + " | ".join(titles) + " |", "|---" * len(titles) + "|"]


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
    lines = header(["task", *(c for _, c in COLUMNS)])
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


# ---------------------------------------------------------------------------------------------- --grid
def grid_column(cell, result: dict) -> str:
    """The table's method of a sweep cell: bc, ls, dime_bc, dime_awbc, multi_bc or multi_awbc."""
    if cell.script == "dime_multi":  # its variant from the results' args
        return f"multi_{result['args']['variant']}"
    if cell.script == "dime_bc":
        return "bc" if cell.alpha == 1.0 else "dime_bc"
    return {"crr_ls": "ls", "dime_awbc": "dime_awbc"}[cell.script]


def summarise_grid(grid_path: str) -> dict:
    """Per task and method, the final return per α and seed of a grid's finished cells; then the table's
    shape (task -> column -> one value per seed): the paper's fixed α and the best α per task, the α with
    the best mean, once every α of the grid has all of the grid's seeds."""
    grid = sweep.read_grid(grid_path)
    cells = sweep.expand(grid, os.path.join(ROOT, grid.get("out", "runs")))
    by_seed, missing, commands, grid_alphas = {}, 0, [], {}
    for cell in cells:
        if cell.script != "dime_multi":  # a multi cell evaluates every α at once
            grid_alphas.setdefault((cell.env_id, grid_column(cell, {})), set()).add(cell.alpha)
        found = sweep.finished(cell)
        if found is None:
            missing += 1
            continue
        result = json.load(open(found))
        command = " ".join(["python", f"{cell.script}.py", *sweep.cell_command(cell)[2:]])
        commands.append(command.replace(ROOT + os.sep, ""))  # paths from the repository root
        finals = result["final"] if isinstance(result["final"], list) else [result["final"]]
        for final in finals:
            per_alpha = by_seed.setdefault(cell.env_id, {}).setdefault(grid_column(cell, result), {})
            per_alpha.setdefault(final["alpha"], {})[cell.seed] = final["mean"]
    seeds = sorted({cell.seed for cell in cells})
    table, curves = {}, {}
    for task, methods in by_seed.items():
        row = table.setdefault(task, {})
        for method, per_alpha in methods.items():
            curves.setdefault(task, {})[method] = {a: [v[s] for s in sorted(v)] for a, v in per_alpha.items()}
            fixed = 1.0 if method == "bc" else FIXED.get(method)
            if fixed in per_alpha:
                row[method] = [per_alpha[fixed].get(s) for s in seeds]
            complete = [a for a, v in per_alpha.items() if len(v) == len(seeds)]
            if method != "bc" and complete and grid_alphas.get((task, method), set()) <= set(complete):
                best = max(complete, key=lambda a: np.mean(list(per_alpha[a].values())))
                row[f"{method}_best"], row[f"{method}_best_alpha"] = [per_alpha[best][s] for s in seeds], best
    return {"table": table, "curves": curves, "seeds": seeds, "missing_cells": missing, "commands": commands}


CLAIMS = [  # (left, right, factor): "left < factor·right" is the claim ("≥" for the multi ones)
    ("bc", "dime_bc", 1.0, "BC < DiME (BC) α=.45"),
    ("bc", "ls", 1.0, "BC < LS α=.3"),
    ("ls", "dime_bc", 1.0, "LS α=.3 < DiME (BC) α=.45"),
    ("ls", "dime_awbc", 1.0, "LS α=.3 < DiME (AWBC) α=.5"),
    ("ls_best", "dime_bc_best", 1.0, "best α: LS < DiME (BC)"),
    ("ls_best", "dime_awbc_best", 1.0, "best α: LS < DiME (AWBC)"),
    ("dime_bc_best", "multi_bc_best", 0.95, "DiME (BC) multi ≥ 95 % of its best single α"),
    ("dime_awbc_best", "multi_awbc_best", 0.95, "DiME (AWBC) multi ≥ 95 % of its best single α"),
]


def unfinished(table: dict, key: str) -> str:
    """'<column> on <tasks>' for the tasks where a claim's column has fewer than 2 finished seeds ('' if
    none); a best-α column is finished once every α of the grid has every seed."""
    tasks = [t for t, row in table.items() if sum(v is not None for v in row.get(key) or []) < 2]
    name = dict(COLUMNS)[key] + (" (every α at every seed)" if key.endswith("_best") else "")
    return f"{name} on {', '.join(tasks)}" if tasks else ""


def check_claims(summary: dict) -> list[dict]:
    """Each claim on the same-seed difference right - factor·left, averaged over tasks: mean and 95 % interval
    over seeds; 'holds' when the mean is ≥ 0 (for the multi claims) or > 0, 'separated' when the interval
    excludes 0. Needs both columns finished on every task for 2 seeds, else 'not yet' with the columns and
    tasks it waits for."""
    table, out = summary["table"], []
    for left, right, factor, text in CLAIMS:
        diffs = []
        for i in range(len(summary["seeds"])):
            pairs = [(row.get(left), row.get(right)) for row in table.values()]
            if pairs and all(a and b and a[i] is not None and b[i] is not None for a, b in pairs):
                diffs.append(float(np.mean([b[i] - factor * a[i] for a, b in pairs])))
        claim = {"claim": text, "seeds": len(diffs), "tasks": sorted(table)}
        waits = "; ".join(filter(None, (unfinished(table, key) for key in (left, right))))
        claim["needs"] = waits or "the same 2 seeds of both columns on every task"
        claim.update(paired_verdict(diffs, holds_at_zero=factor != 1.0))
        out.append(claim)
    return out


def claims_markdown(claims: list[dict]) -> str:
    lines = header(["claim (mean over tasks, same-seed difference)", "difference ± 95 %", "seeds", "verdict"])
    for c in claims:
        if "holds" not in c:
            verdict = f"not yet (waits for {c['needs']})"
            lines.append(f"| {c['claim']} | – | {c['seeds']} | {verdict} |")
            continue
        difference = f"{c['difference']:+.1f} ± {c['interval']:.1f}"
        lines.append(f"| {c['claim']} | {difference} | {c['seeds']} | {verdict_text(c)} |")
    return "\n".join(lines)


def cell_text(values: list | None, n_seeds: int, note: str = "") -> str:
    """'mean ± 95 % interval' of a cell's finished seeds (None: unfinished), '[n seeds]' where fewer than the
    grid's; '–' for none."""
    done = [v for v in values or [] if v is not None]
    if not done:
        return "–"
    (mean, half), n = mean_ci95(done), len(done)
    text = f"{mean:.0f}" + (f" ± {half:.0f}" if half is not None else "") + note
    return text + (f" [{n} seed{'s' * (n > 1)}]" if n < n_seeds else "")


def grid_markdown(summary: dict) -> str:
    """The table: per task and column, mean ± 95 % interval over the finished seeds."""
    n_seeds = len(summary["seeds"])
    lines = header(["task", *(c for _, c in COLUMNS)])
    for task, row in summary["table"].items():
        notes = {key: f" (α={row[key + '_alpha']})" if key + "_alpha" in row else "" for key, _ in COLUMNS}
        cells = [cell_text(row.get(key), n_seeds, notes[key]) for key, _ in COLUMNS]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# the methods with a return for each α (tables and the α plot), and their labels
ALPHA_METHODS = {
    "ls": "LS",
    "dime_bc": "DiME (BC)",
    "dime_awbc": "DiME (AWBC)",
    "multi_bc": "DiME (BC) multi",
    "multi_awbc": "DiME (AWBC) multi",
}


def alpha_markdown(summary: dict) -> str:
    """Final return against α per task and method, every α any cell ran (the numbers behind GRID_alpha.png);
    DiME (BC) at α = 1 is the BC column: the same script."""
    curves, n_seeds = summary["curves"], len(summary["seeds"])
    alphas = sorted({a for methods in curves.values() for by_alpha in methods.values() for a in by_alpha})
    lines = header(["task", "method", *(f"α={a:g}" for a in alphas)])
    for task, methods in curves.items():
        for key in (k for k in ALPHA_METHODS if k in methods):
            by_alpha = {**methods.get("bc", {}), **methods[key]} if key == "dime_bc" else methods[key]
            cells = [cell_text(by_alpha.get(a), n_seeds) for a in alphas]
            lines.append(f"| {task} | {ALPHA_METHODS[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_grid_table(opts) -> None:
    summary = summarise_grid(opts.grid)
    if not summary["table"]:
        sys.exit(f"error: no cell of {opts.grid} has finished; run it with benchmarks/sweep.py first")
    summary["claims"] = check_claims(summary)
    text = grid_markdown(summary) + "\n\n" + claims_markdown(summary["claims"])
    text += f"\n\nCells not finished yet: {summary['missing_cells']}."
    text += "\n\nFinal return against α (mean ± 95 % interval over seeds):\n\n" + alpha_markdown(summary)
    print(text)
    with open(opts.table, "w") as f:
        f.write(
            f"{text}\n\nCommands of the finished cells:\n\n```\n" + "\n".join(summary["commands"]) + "\n```\n"
        )
    with open(opts.json, "w") as f:
        json.dump(summary, f, indent=1, default=str)
    plot(summary, opts.figure)


def plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary["curves"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for key, label in ALPHA_METHODS.items():
            by_alpha = summary["curves"][task].get(key)
            if by_alpha:
                alphas = sorted(by_alpha)
                style = "--" if key.startswith("multi") else "-"
                color = f"C{list(ALPHA_METHODS).index(key)}"  # the same colour for a method in every panel
                means = [np.mean(by_alpha[a]) for a in alphas]
                ax.plot(alphas, means, style, marker="o", ms=3, color=color, label=label)
        if "bc" in summary["curves"][task]:
            ax.axhline(np.mean(summary["curves"][task]["bc"][1.0]), color="k", lw=1, label="BC")
        ax.set(title=task, xlabel="trade-off α (weight of the BC term)", ylabel="final return", xlim=(0, 1))
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
    figures = os.path.join(ROOT, "docs", "figures")
    parser.add_argument("--table", help="default: docs/figures/offline_table.md (--grid: GRID.md)")
    parser.add_argument("--json", help="default: docs/figures/offline_table.json (--grid: GRID.json)")
    parser.add_argument("--figure", help="default: docs/figures/offline_alpha.png (--grid: GRID_alpha.png)")
    parser.add_argument(
        "--grid", help="tabulate this sweep grid's finished cells (benchmarks/sweep.py); run none"
    )
    opts = parser.parse_args()
    stem = os.path.splitext(os.path.basename(opts.grid))[0] if opts.grid else "offline_table"
    opts.table = opts.table or os.path.join(figures, f"{stem}.md")  # a grid never overwrites another's table
    opts.json = opts.json or os.path.join(figures, f"{stem}.json")
    figure = f"{stem}_alpha.png" if opts.grid else "offline_alpha.png"
    opts.figure = opts.figure or os.path.join(figures, figure)
    if opts.grid:
        return write_grid_table(opts)
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
