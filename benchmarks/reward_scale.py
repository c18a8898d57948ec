"""DiME against LS across the scale of the reward: the table, figure and diagnostics of the reward-scale grid.

    python benchmarks/sweep.py benchmarks/grids/reward_scale.yaml --env-ids cheetah_run --seeds 1 --workers 2
    python benchmarks/reward_scale.py                    # docs/figures/reward_scale.{png,json,md}

Reads every finished cell of benchmarks/results/reward_scale (entries named <method>_c<c>: the zoo dataset
with every reward times c, the critic's support times c). For each method and task it prints the final
return at each c (mean ± 95 % interval over seeds), and the claim's measure: the spread across c of
same-seed returns (max - min over c, for seeds finished at every c), mean ± interval. Beside them, the last
logged learner diagnostics that explain it (averaged over seeds): the weight ESS and the share of weights
above 10 (LS's clip is 20), DiME's learned temperature η, and the advantage spread (std of A, Q units).
Then the claim "DiME moves less across c than LS", per task: the same-seed difference LS spread - DiME
spread, mean ± interval, with a verdict once two seeds are finished at every c of both, and over all tasks
together (each task's seeds as pairs). `--last K` reads a run's return as the mean of its last K evaluations
(default 1: the final one; the return moves ±20 between consecutive evaluations, so K = 2 halves that
noise's variance for the same runs). Unfinished cells are listed, never guessed.
"""

import argparse
import glob
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from aggregate import fmt_ci, mean_ci95, paired_verdict, verdict_text, write_table  # noqa: E402  (the Student t every table here uses)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {"bc": "BC", "ls": "LS α=.3", "dime_bc": "DiME (BC) α=.45", "dime_awbc": "DiME (AWBC) α=.5"}
SCALES = (0.1, 1.0, 10.0)
DIAGNOSTICS = {  # results.json diagnostics key: column label
    "losses/advantage_std": "A std",
    "losses/weight_ess": "weight ESS",
    "losses/weight_above_10": "w > 10",
    "losses/temperature": "η",
}
ENTRY = re.compile(r"^(?P<method>.+)_c(?P<scale>[0-9.]+)$")


def load(results_dir: str) -> dict:
    """{(method, task, c): {seed: results.json}} of every finished cell."""
    cells: dict = {}
    for path in glob.glob(os.path.join(results_dir, "*", "*", "*", "seed_*", "*", "results.json")):
        parts = os.path.relpath(path, results_dir).split(os.sep)
        match = ENTRY.match(parts[0])
        if match and match["method"] in METHODS:
            key = (match["method"], parts[1], float(match["scale"]))
            cells.setdefault(key, {})[int(parts[3].split("_")[1])] = json.load(open(path))
    return cells


def run_return(result: dict, last: int) -> float:
    """A run's return: the mean of its last `last` evaluations' mean returns (1: the final evaluation)."""
    return float(np.mean([e["mean"] for e in result["evaluations"][-last:]]))


def summarise(cells: dict, last: int = 1) -> dict:
    """Per (method, task): returns and diagnostics at every c, and the same-seed spread across c."""
    out: dict = {}
    for method, task in sorted({(m, t) for m, t, _ in cells}):
        row: dict = {"finals": {}, "diagnostics": {}}
        for c in SCALES:
            runs = cells.get((method, task, c), {})
            if runs:
                finals = [run_return(runs[s], last) for s in sorted(runs)]
                row["finals"][c] = {"seeds": sorted(runs), "returns": finals, "mean_ci95": mean_ci95(finals)}
                diagnostics = [runs[s]["evaluations"][-1].get("diagnostics", {}) for s in sorted(runs)]
                row["diagnostics"][c] = {
                    k: float(np.mean([d[k] for d in diagnostics])) for k in DIAGNOSTICS if k in diagnostics[0]
                }
        complete = (
            set.intersection(*(set(v["seeds"]) for v in row["finals"].values())) if row["finals"] else set()
        )
        complete = sorted(complete) if len(row["finals"]) == len(SCALES) else []
        spreads = [
            np.ptp([run_return(cells[(method, task, c)][s], last) for c in SCALES]).item() for s in complete
        ]
        row["spread"] = {
            "seeds": complete,
            "values": spreads,
            "mean_ci95": mean_ci95(spreads) if spreads else None,
        }
        out[f"{method}/{task}"] = row
    return out


def claims(summary: dict) -> list[dict]:
    """ "DiME's return moves less across c than LS's", per task and DiME variant, then over all tasks: the
    same-seed difference LS spread - DiME spread where both finished every c (holds: > 0; separated: beyond
    ± 95 %)."""
    out = []
    for key, row in summary.items():
        method, task = key.split("/")
        ls = summary.get(f"ls/{task}")
        if method not in ("dime_bc", "dime_awbc") or not ls:
            continue
        mine, theirs = (dict(zip(r["spread"]["seeds"], r["spread"]["values"])) for r in (row, ls))
        seeds = sorted(set(mine) & set(theirs))
        claim = {"claim": f"{METHODS[method]} moves less across c than LS α=.3", "task": task, "seeds": seeds}
        out.append(verdict(claim, [theirs[s] - mine[s] for s in seeds]))
    for method in ("dime_bc", "dime_awbc"):
        rows = [c for c in out if c["claim"].startswith(METHODS[method])]
        if len({c["task"] for c in rows if c["differences"]}) > 1:
            pairs = [(c["task"], s) for c in rows for s in c["seeds"]]
            claim = {"claim": rows[0]["claim"], "task": "all tasks", "seeds": pairs}
            out.append(verdict(claim, [d for c in rows for d in c["differences"]]))
    return out


def verdict(claim: dict, diffs: list[float]) -> dict:
    """The claim with its differences, and from two pairs on their mean ± 95 % interval and verdict."""
    return {**claim, "differences": diffs, **paired_verdict(diffs)}


def markdown(summary: dict, claim_rows: list[dict]) -> str:
    lines = [
        "| method | task | " + " | ".join(f"c = {c:g}" for c in SCALES) + " | spread across c (same seed) |"
    ]
    lines.append("|---" * (len(SCALES) + 3) + "|")
    for key, row in summary.items():
        method, task = key.split("/")
        cols = []
        for c in SCALES:
            f = row["finals"].get(c)
            cols.append("–" if f is None else f"{fmt_ci(*f['mean_ci95'])} (n={len(f['seeds'])})")
        spread = row["spread"]
        cols.append(
            "–" if not spread["values"] else f"{fmt_ci(*spread['mean_ci95'])} (n={len(spread['values'])})"
        )
        lines.append(f"| {METHODS[method]} | {task} | " + " | ".join(cols) + " |")
    lines += [
        "",
        "| method | task | c | " + " | ".join(DIAGNOSTICS.values()) + " |",
        "|---" * (len(DIAGNOSTICS) + 3) + "|",
    ]
    for key, row in summary.items():
        method, task = key.split("/")
        for c, d in row["diagnostics"].items():
            values = [("–" if k not in d else f"{d[k]:.3g}") for k in DIAGNOSTICS]
            lines.append(f"| {METHODS[method]} | {task} | {c:g} | " + " | ".join(values) + " |")
    lines += ["", "| claim | task | LS spread - DiME spread (same seed) ± 95 % | seeds | verdict |"]
    lines.append("|---|---|---|---|---|")
    for c in claim_rows:
        if "holds" not in c:
            lines.append(f"| {c['claim']} | {c['task']} | – | {len(c['seeds'])} | not yet (needs 2 seeds) |")
            continue
        difference = f"{c['difference']:+.1f} ± {c['interval']:.1f}"
        lines.append(f"| {c['claim']} | {c['task']} | {difference} | {len(c['seeds'])} | {verdict_text(c)} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({key.split("/")[1] for key in summary})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method, label in METHODS.items():
            row = summary.get(f"{method}/{task}")
            if not row or not row["finals"]:
                continue
            cs = sorted(row["finals"])
            means = [row["finals"][c]["mean_ci95"][0] for c in cs]
            halves = [row["finals"][c]["mean_ci95"][1] or 0.0 for c in cs]
            ax.errorbar(cs, means, yerr=halves, marker="o", capsize=3, label=label)
        ax.set(xscale="log", xlabel="reward scale c (critic support × c)", ylabel="final return", title=task)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results", "reward_scale"))
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "figures", "reward_scale"))
    parser.add_argument("--last", type=int, default=1, help="a run's return: mean of its last K evaluations")
    opts = parser.parse_args()
    if opts.last < 1:
        sys.exit(f"error: --last {opts.last} must be at least 1 (1: the final evaluation)")
    cells = load(opts.results)
    if not cells:
        sys.exit(f"error: no finished cells under {opts.results}; run the grid first (see --help)")
    summary = summarise(cells, opts.last)
    claim_rows = claims(summary)
    text = markdown(summary, claim_rows)
    if opts.last > 1:
        text = f"A run's return: the mean of its last {opts.last} evaluations.\n\n" + text
    write_table(opts.out, text, {**summary, "claims": claim_rows, "last_evaluations": opts.last})
    plot(summary, opts.out + ".png")
    print(f"written {opts.out}.md, .json, .png ({sum(len(v) for v in cells.values())} runs)")


if __name__ == "__main__":
    main()
