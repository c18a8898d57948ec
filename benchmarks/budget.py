"""Does the paper's order BC < LS < DiME (BC) emerge with the learner budget? The budget grid's curves and
same-seed differences.

    python benchmarks/sweep.py benchmarks/grids/offline_budget.yaml --env-ids cheetah_run --seeds 1
    python benchmarks/budget.py                          # docs/figures/offline_budget.{png,json,md}

Reads every finished cell of benchmarks/results/offline_budget (entries bc, ls, dime_bc: BC α = 1, LS α = .3,
DiME (BC) α = .45, 60k learner steps, an evaluation every 5k). For each task it prints the return of each
method at --steps (default 20k, 40k, 60k; mean ± 95 % interval over seeds), then the paper's three orderings
as same-seed differences at each of those steps: DiME (BC) - LS, DiME (BC) - BC, LS - BC, per task and over
all tasks (each task's seeds as pairs), with a verdict from two pairs on (holds: > 0; separated: beyond the
interval). `--last K` reads the return at a step as the mean of the K evaluations up to it (default 1; one
run's return moves by tens between neighbouring evaluations). The figure: return against learner steps,
mean ± interval band per method, one panel per task. Unfinished cells are left out, never guessed.
"""

import argparse
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from aggregate import fmt_ci, mean_ci95, paired_verdict, verdict_text, write_table  # noqa: E402  (the Student t every table here uses)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {"bc": "BC", "ls": "LS α=.3", "dime_bc": "DiME (BC) α=.45"}
ORDERINGS = (("dime_bc", "ls"), ("dime_bc", "bc"), ("ls", "bc"))  # (higher, lower) in the paper's Table 2


def load(results_dir: str) -> dict:
    """{(method, task): {seed: [(step, mean return), ...]}} of every finished cell."""
    cells: dict = {}
    for path in glob.glob(os.path.join(results_dir, "*", "*", "*", "seed_*", "*", "results.json")):
        method, task, _, seed = os.path.relpath(path, results_dir).split(os.sep)[:4]
        if method in METHODS:
            curve = [(e["step"], e["mean"]) for e in json.load(open(path))["evaluations"]]
            cells.setdefault((method, task), {})[int(seed.split("_")[1])] = curve
    return cells


def at_step(curve: list, step: int, last: int) -> float | None:
    """The return at `step`: the mean of the `last` evaluations up to it (None: the run has no such step)."""
    steps = [s for s, _ in curve]
    if step not in steps:
        return None
    i = steps.index(step)
    return float(np.mean([r for _, r in curve[max(0, i - last + 1) : i + 1]]))


def summarise(cells: dict, steps: list[int], last: int) -> dict:
    """Per task: each method's returns at `steps`; the orderings' same-seed differences (and pooled)."""
    tasks = sorted({task for _, task in cells})
    out: dict = {"returns": {}, "differences": []}
    for task in tasks:
        for method in METHODS:
            runs = cells.get((method, task), {})
            for step in steps:
                values = {s: at_step(c, step, last) for s, c in sorted(runs.items())}
                values = {s: v for s, v in values.items() if v is not None}
                if values:
                    entry = {"seeds": list(values), "returns": list(values.values())}
                    entry["mean_ci95"] = mean_ci95(entry["returns"])
                    out["returns"][f"{method}/{task}/{step}"] = entry
    for high, low in ORDERINGS:
        for step in steps:
            pooled: list = []
            for task in tasks:
                a, b = (out["returns"].get(f"{m}/{task}/{step}") for m in (high, low))
                if a and b:
                    pairs = dict(zip(a["seeds"], a["returns"])), dict(zip(b["seeds"], b["returns"]))
                    diffs = [
                        (task, s, pairs[0][s] - pairs[1][s]) for s in sorted(set(pairs[0]) & set(pairs[1]))
                    ]
                    out["differences"].append(verdict(high, low, step, task, diffs))
                    pooled += diffs
            if len({task for task, _, _ in pooled}) > 1:
                out["differences"].append(verdict(high, low, step, "all tasks", pooled))
    return out


def verdict(high: str, low: str, step: int, task: str, diffs: list) -> dict:
    """One ordering at one step: its same-seed differences, and from two pairs on mean ± 95 % and verdict."""
    row = {"claim": f"{METHODS[low]} < {METHODS[high]}", "step": step, "task": task}
    row["pairs"] = [(t, s) for t, s, _ in diffs]
    row["differences"] = [d for _, _, d in diffs]
    return {**row, **paired_verdict(row["differences"])}


def markdown(summary: dict, steps: list[int], last: int) -> str:
    lines = [] if last == 1 else [f"A return at a step: the mean of the {last} evaluations up to it.", ""]
    lines.append("| task | method | " + " | ".join(f"{s // 1000}k" for s in steps) + " |")
    lines.append("|---" * (len(steps) + 2) + "|")
    tasks = sorted({key.split("/")[1] for key in summary["returns"]})
    for task in tasks:
        for method, label in METHODS.items():
            cols = []
            for step in steps:
                entry = summary["returns"].get(f"{method}/{task}/{step}")
                cols.append(
                    "–" if entry is None else f"{fmt_ci(*entry['mean_ci95'])} (n={len(entry['seeds'])})"
                )
            lines.append(f"| {task} | {label} | " + " | ".join(cols) + " |")
    lines += ["", "| claim | task | step | difference (same seed) ± 95 % | pairs | verdict |"]
    lines.append("|---|---|---|---|---|---|")
    for row in summary["differences"]:
        done = "holds" in row
        difference = f"{row['difference']:+.1f} ± {row['interval']:.1f}" if done else "–"
        verdict = verdict_text(row) if done else "not yet (needs 2 pairs)"
        cols = [row["claim"], row["task"], f"{row['step'] // 1000}k", difference, len(row["pairs"]), verdict]
        lines.append("| " + " | ".join(map(str, cols)) + " |")
    return "\n".join(lines) + "\n"


def plot(cells: dict, path: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure to close

    tasks = sorted({task for _, task in cells})
    fig = Figure(figsize=(5 * len(tasks), 3.6))
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        seen = []  # every run's returns: the y-axis spans them, so a 2-seed band cannot squash the curves
        for method, label in METHODS.items():
            runs = cells.get((method, task), {})
            if not runs:
                continue
            steps = sorted(set.intersection(*({s for s, _ in c} for c in runs.values())))
            curves = [[dict(c)[s] for s in steps] for c in runs.values()]
            seen += [r for curve in curves for r in curve]
            mean, half = mean_ci95(curves)
            ax.plot(steps, mean, label=f"{label} (n={len(curves)})")
            if half is not None:
                ax.fill_between(steps, mean - half, mean + half, alpha=0.2)
        pad = 0.05 * (max(seen) - min(seen) or 1.0)
        ax.set_ylim(min(seen) - pad, max(seen) + pad)
        ax.set(xlabel="learner steps", ylabel="return (20 episodes)", title=task)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results", "offline_budget"))
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "figures", "offline_budget"))
    parser.add_argument("--steps", type=int, nargs="+", default=[20000, 40000, 60000])
    parser.add_argument(
        "--last", type=int, default=1, help="return at a step: mean of the K evaluations up to it"
    )
    opts = parser.parse_args()
    if opts.last < 1:
        sys.exit(f"error: --last {opts.last} must be at least 1 (1: the evaluation at the step)")
    cells = load(opts.results)
    if not cells:
        sys.exit(f"error: no finished cells under {opts.results}; run the grid first (see --help)")
    summary = summarise(cells, opts.steps, opts.last)
    text = markdown(summary, opts.steps, opts.last)
    write_table(opts.out, text, {**summary, "steps": opts.steps, "last_evaluations": opts.last})
    plot(cells, opts.out + ".png")
    print(f"written {opts.out}.md, .json, .png ({sum(len(v) for v in cells.values())} runs)")


if __name__ == "__main__":
    main()
