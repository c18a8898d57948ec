"""Tables and plots from every results.json under a directory (a sweep's, or any runs/ folder).

    python benchmarks/aggregate.py runs/sweeps/offline_table                 # writes <dir>/aggregate/
    python benchmarks/aggregate.py runs/sweeps/offline_table --out docs/figures/offline_sweep --all-curves

Writes to --out (default <dir>/aggregate): table.md and table.csv (final return per method, α and task, and
the best α per task), alpha.png (final return against α, one panel per task plus the mean over tasks) and
curves.png (evaluation return against learner steps); table.md is printed too.

Decisions (docs/sweeps.md):
- A run's value is its final evaluation, results["final"]["mean"]. dime_multi lists one final entry per
  evaluated α: each is a point of its method's α curve. Runs whose final mean is not one number (dime_morl's
  per-objective returns) are left out with a notice; its fronts are in its own results.json.
- Method = the run's --exp-name (a sweep passes the grid entry's name, e.g. "bc" for crr_ls at α = 1); with
  the default exp-name (the script's name) the script's --variant or --method is appended, so dime_multi
  bc/awbc or dime_finetune dime/ls never pool. α = results["alpha"]; None (dime_finetune --learn-alpha)
  is its own row, written "learned".
- Over seeds: mean ± standard error, se = std(ddof=1)/sqrt(n); with one seed the se is blank (CSV) and left
  out (Markdown). A seed found twice for the same (method, task, α) counts once: the newest file wins.
- Mean over tasks: the mean of the per-task means, with se = sqrt(Σ se_t²)/T (independent tasks); written
  only when the row has every task (and every task's se, for the se).
- Best α per (method, task): the α with the highest seed-mean; curves.png shows that α's curve per method
  (every α with --all-curves), mean over seeds at each evaluation step.
"""

import argparse
import csv
import json
import math
import os
import sys

import numpy as np

LEARNED = "learned"  # how α = None is written
MEAN_PANEL = "mean over tasks"
LINE_STYLES = ("-", "--", ":", "-.")


class AggregateError(Exception):
    """Bad input: one line on stderr, exit code 2."""


# ---------------------------------------------------------------------------------------------- reading
def find_results(directory: str) -> list[str]:
    """Every results.json below `directory`, sorted."""
    found = []
    for root, _, files in os.walk(directory):
        found += [os.path.join(root, f) for f in files if f == "results.json"]
    return sorted(found)


def method_of(results: dict) -> str:
    """The run's --exp-name; with the default (the script's name) plus --variant/--method if any."""
    algo = results["algo"]
    name = (results.get("args") or {}).get("exp_name") or algo
    if name == algo:
        name += "".join(f"-{results[k]}" for k in ("variant", "method") if results.get(k))
    return name


def points_of(results: dict) -> list[tuple[float | None, float]]:
    """(α, final mean) of one run: one point, or one per evaluated α for dime_multi's list."""
    finals = results["final"] if isinstance(results["final"], list) else [results["final"]]
    alphas = [f.get("alpha") for f in finals] if isinstance(results["final"], list) else [results["alpha"]]
    return [(a, f["mean"]) for a, f in zip(alphas, finals)]


def load_runs(directory: str) -> tuple[dict, dict]:
    """values[(method, env_id, α)][seed] = final mean, and runs[(method, env_id)] = [results, ...]."""
    paths = find_results(directory)
    if not paths:
        raise AggregateError(f"no results.json under {directory}; pass a sweep or runs directory")
    values, runs, when = {}, {}, {}
    for path in paths:
        try:
            with open(path) as f:
                results = json.load(f)
            method, env_id, seed = method_of(results), results["env_id"], results["seed"]
            points = points_of(results)
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"notice: skipped {path} ({type(e).__name__}: {e})", file=sys.stderr)
            continue
        if not all(isinstance(v, (int, float)) for _, v in points):
            print(
                f"notice: skipped {path} (final return is not one number: {results['algo']})", file=sys.stderr
            )
            continue
        runs.setdefault((method, env_id), []).append(results)
        for alpha, value in points:
            key, mtime = (method, env_id, alpha), os.path.getmtime(path)
            if seed in values.get(key, {}):
                print(
                    f"notice: seed {seed} of {key} found twice; keeping the newest ({path})", file=sys.stderr
                )
                if mtime < when[key, seed]:
                    continue
            values.setdefault(key, {})[seed] = float(value)
            when[key, seed] = mtime
    if not values:
        raise AggregateError(f"no results.json under {directory} has a final return to tabulate")
    return values, runs


# ---------------------------------------------------------------------------------------------- statistics
def mean_se(samples: list[float]) -> tuple[float, float | None, int]:
    """Mean, standard error std(ddof=1)/sqrt(n) (None for one sample) and n."""
    n = len(samples)
    se = float(np.std(samples, ddof=1) / math.sqrt(n)) if n > 1 else None
    return float(np.mean(samples)), se, n


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def ci95(se: float | None, n: int | None) -> float | None:
    """Half-width of the 95 % interval of a mean: Student t with n - 1 degrees of freedom (n seeds), or the
    normal 1.96 when n is unknown (a mean over tasks) or above 11."""
    if se is None:
        return None
    return se * (T_975.get(n - 1, 1.96) if n else 1.96)


def mean_ci95(samples) -> tuple:
    """Mean over the first axis (seeds) and the half-width of its 95 % t-interval (None for one seed);
    `samples` is [n] final returns or [n, T] curves. Every table and band in benchmarks/ uses it."""
    x = np.asarray(samples, float)
    se = x.std(0, ddof=1) / math.sqrt(len(x)) if len(x) > 1 else None
    mean, half = x.mean(0), ci95(se, len(x))
    if x.ndim == 1:  # final returns: plain floats, as JSON wants them
        return float(mean), None if half is None else float(half)
    return mean, half


def paired_verdict(differences: list[float], holds_at_zero: bool = False) -> dict:
    """Same-seed differences' mean ± 95 % and verdict, from two pairs on ({} before): holds when the mean
    is > 0 (≥ 0 with `holds_at_zero`), separated when the interval excludes 0. The claims of benchmarks/."""
    if len(differences) < 2:
        return {}
    mean, half = mean_ci95(differences)
    holds = mean >= 0 if holds_at_zero else mean > 0
    return dict(difference=mean, interval=half, holds=holds, separated=abs(mean) > half)


def verdict_text(claim: dict) -> str:
    """ "holds" / "does not hold", with " (within noise)" when not separated (a claim with a verdict)."""
    return ("holds" if claim["holds"] else "does not hold") + (
        "" if claim["separated"] else " (within noise)"
    )


def mean_over_tasks(stats: list[tuple[float, float | None, int]]) -> tuple[float, float | None]:
    """Mean of per-task means and its se sqrt(Σ se_t²)/T (None if any task's se is)."""
    means, ses = [s[0] for s in stats], [s[1] for s in stats]
    se = None if any(s is None for s in ses) else math.sqrt(sum(s * s for s in ses)) / len(ses)
    return float(np.mean(means)), se


def alpha_order(alpha) -> tuple:
    return (alpha is None, alpha if alpha is not None else 0.0)


def summarise(values: dict) -> dict:
    """Per (method, α): stats per task and the mean over tasks; per method: best α per task and mean."""
    tasks = sorted({env for _, env, _ in values})
    methods = sorted({m for m, _, _ in values})
    rows, best = [], []
    for method in methods:
        alphas = sorted({a for m, _, a in values if m == method}, key=alpha_order)
        for alpha in alphas:
            per_task = {
                t: mean_se(list(values[method, t, alpha].values()))
                for t in tasks
                if (method, t, alpha) in values
            }
            overall = mean_over_tasks([per_task[t] for t in tasks]) if len(per_task) == len(tasks) else None
            rows.append(dict(method=method, alpha=alpha, tasks=per_task, mean=overall))
        chosen = {}
        for t in tasks:
            candidates = [r for r in rows if r["method"] == method and t in r["tasks"]]
            if candidates:
                top = max(candidates, key=lambda r: r["tasks"][t][0])
                chosen[t] = (top["alpha"], top["tasks"][t])
        overall = mean_over_tasks([chosen[t][1] for t in tasks]) if len(chosen) == len(tasks) else None
        best.append(dict(method=method, tasks=chosen, mean=overall))
    return dict(tasks=tasks, rows=rows, best=best)


# ---------------------------------------------------------------------------------------------- tables
def fmt_alpha(alpha) -> str:
    return LEARNED if alpha is None else f"{alpha:g}"


def fmt_stat(mean: float, se: float | None, n: int | None = None) -> str:
    """mean ± the half-width of its 95 % interval (seeds)."""
    half = ci95(se, n)
    text = f"{mean:.1f}" if half is None else f"{mean:.1f} ± {half:.1f}"
    return text if n is None else f"{text} ({n})"


def fmt_ci(mean: float, half: float | None) -> str:
    """mean ± the half-width of its 95 % interval, as mean_ci95 returns them (no interval for one seed)."""
    return f"{mean:.1f}" + ("" if half is None else f" ± {half:.1f}")


def write_table(out: str, text: str, data: dict) -> None:
    """A benchmark's table: print it, write it to <out>.md and its data to <out>.json."""
    print(text, end="")
    with open(out + ".md", "w") as f:
        f.write(text)
    with open(out + ".json", "w") as f:
        json.dump(data, f, indent=1, default=str)


def fmt_over_tasks(mean_se: tuple[float, float | None], stats) -> str:
    """The mean over tasks ± its 95 % interval: t at the fewest seeds of any task (conservative)."""
    half = ci95(mean_se[1], min(n for *_, n in stats))
    return f"{mean_se[0]:.1f}" if half is None else f"{mean_se[0]:.1f} ± {half:.1f}"


def markdown(summary: dict, directory: str) -> str:
    """Two tables: per method and α, and best α per task; cells are mean ± se (seeds)."""
    tasks = summary["tasks"]
    head = "| " + " | ".join(tasks + [MEAN_PANEL]) + " |"
    rule = "|---" * (len(tasks) + 2) + "|---|"
    lines = [f"# Final return: {directory}", ""]
    lines += [
        "Mean ± half-width of the 95 % interval over seeds (Student t; number of seeds); over tasks,",
        "",
    ]
    lines += ["t at the fewest seeds × the combined standard error. Final evaluation of each run.", ""]
    lines += ["## Per method and α", "", "| method | α " + head, rule]
    for row in summary["rows"]:
        cells = [fmt_stat(*row["tasks"][t]) if t in row["tasks"] else "-" for t in tasks]
        cells.append(fmt_over_tasks(row["mean"], row["tasks"].values()) if row["mean"] else "-")
        lines.append(f"| {row['method']} | {fmt_alpha(row['alpha'])} | " + " | ".join(cells) + " |")
    lines += ["", "## Best α per task", "", "| method " + head, rule[4:]]
    for row in summary["best"]:
        cells = []
        for t in tasks:
            alpha, stat = row["tasks"].get(t, (None, None))
            cells.append(f"{fmt_stat(*stat)}, α={fmt_alpha(alpha)}" if stat else "-")
        stats = [stat for _, stat in row["tasks"].values()]
        cells.append(fmt_over_tasks(row["mean"], stats) if row["mean"] else "-")
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_rows(summary: dict) -> list[list]:
    """Long format: table (alpha | best), method, env_id (or "mean"), alpha, seeds, mean, se."""
    out = [["table", "method", "env_id", "alpha", "seeds", "mean", "se"]]
    blank = lambda x: "" if x is None else x
    for row in summary["rows"]:
        alpha = fmt_alpha(row["alpha"])
        for t, (mean, se, n) in row["tasks"].items():
            out.append(["alpha", row["method"], t, alpha, n, mean, blank(se)])
        if row["mean"]:
            out.append(["alpha", row["method"], "mean", alpha, "", row["mean"][0], blank(row["mean"][1])])
    for row in summary["best"]:
        for t, (alpha, (mean, se, n)) in row["tasks"].items():
            out.append(["best", row["method"], t, fmt_alpha(alpha), n, mean, blank(se)])
        if row["mean"]:
            out.append(["best", row["method"], "mean", "", "", row["mean"][0], blank(row["mean"][1])])
    return out


# ---------------------------------------------------------------------------------------------- plots
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panel_stat(row: dict, panel: str):
    """A row's (mean, se[, n]) for one panel: a task, or the mean over tasks."""
    return row["mean"] if panel == MEAN_PANEL else row["tasks"].get(panel)


def plot_alpha(summary: dict, path: str) -> None:
    """Final return against α per method: one panel per task and one for the mean over tasks."""
    plt = pyplot()
    panels = summary["tasks"] + [MEAN_PANEL]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    methods = sorted({r["method"] for r in summary["rows"]})
    for ax, panel in zip(axes[0], panels):
        for i, method in enumerate(methods):
            color = f"C{i % 10}"
            rows = [r for r in summary["rows"] if r["method"] == method]
            points = [(r["alpha"], panel_stat(r, panel)) for r in rows if panel_stat(r, panel)]
            numeric = [(a, s) for a, s in points if a is not None]
            if numeric:
                y, err = [s[0] for _, s in numeric], [s[1] or 0.0 for _, s in numeric]
                x = [a for a, _ in numeric]
                ax.errorbar(x, y, yerr=err, marker="o", ms=3, capsize=2, color=color, label=method)
            for a, s in points:
                if a is None:  # learned trade-off: no α to place it at
                    ax.axhline(s[0], ls="--", lw=1, color=color, label=f"{method} ({LEARNED})")
        ax.set(title=panel, xlabel="trade-off α", ylabel="final return")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve(runs: list[dict], alpha) -> tuple[list, list, list]:
    """Steps, mean and se over seeds of the evaluation returns at α (dime_multi: its α's evaluations)."""
    by_step = {}
    for results in runs:
        multi = isinstance(results["final"], list)
        for e in results["evaluations"]:
            if not multi or e.get("alpha") == alpha:
                by_step.setdefault(e["step"], []).append(e["mean"])
    steps = sorted(by_step)
    stats = [mean_se(by_step[s]) for s in steps]
    return steps, [s[0] for s in stats], [s[1] or 0.0 for s in stats]


def runs_at(runs: list[dict], alpha) -> list[dict]:
    """The runs of one method and task that hold α (dime_multi runs hold every evaluated α)."""
    return [r for r in runs if isinstance(r["final"], list) or r["alpha"] == alpha]


def plot_curves(summary: dict, runs: dict, path: str, all_alphas: bool = False) -> None:
    """Evaluation return against learner steps, one panel per task: each method at its best α (one colour
    per method; with `all_alphas` every α of it, told apart by line style)."""
    plt = pyplot()
    tasks = summary["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, row in enumerate(summary["best"]):
            if task not in row["tasks"]:
                continue
            method, alphas = row["method"], [row["tasks"][task][0]]
            if all_alphas:
                alphas = [r["alpha"] for r in summary["rows"] if r["method"] == method and task in r["tasks"]]
            for j, alpha in enumerate(alphas):
                steps, mean, se = curve(runs_at(runs[method, task], alpha), alpha)
                if not steps:
                    continue
                style = dict(color=f"C{i % 10}", ls=LINE_STYLES[j % len(LINE_STYLES)])
                ax.plot(steps, mean, marker="o", ms=2, label=f"{method} α={fmt_alpha(alpha)}", **style)
                ax.fill_between(
                    steps, np.subtract(mean, se), np.add(mean, se), alpha=0.2, color=style["color"]
                )
        ax.set(title=task, xlabel="learner step", ylabel="evaluation return")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- CLI
def aggregate(directory: str, out: str, all_curves: bool = False) -> dict:
    """Read, summarise, write table.md, table.csv, alpha.png, curves.png; returns the summary."""
    values, runs = load_runs(directory)
    summary = summarise(values)
    os.makedirs(out, exist_ok=True)
    text = markdown(summary, directory)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "table.csv"), "w", newline="") as f:
        csv.writer(f).writerows(csv_rows(summary))
    plot_alpha(summary, os.path.join(out, "alpha.png"))
    plot_curves(summary, runs, os.path.join(out, "curves.png"), all_curves)
    print(text)
    print(f"wrote table.md, table.csv, alpha.png, curves.png to {out}")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory", help="read every results.json below this directory")
    parser.add_argument("--out", help="output directory (default: <directory>/aggregate)")
    parser.add_argument("--all-curves", action="store_true", help="curves.png: every α, not only the best")
    opts = parser.parse_args(argv)
    try:
        if not os.path.isdir(opts.directory):
            raise AggregateError(f"{opts.directory} is not a directory; pass a sweep or runs directory")
        aggregate(opts.directory, opts.out or os.path.join(opts.directory, "aggregate"), opts.all_curves)
    except AggregateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
