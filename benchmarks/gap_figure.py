"""Return and policy stddev against learner steps for chosen cells of a grid: the DiME-BC gap and its cause.

    python benchmarks/gap_figure.py benchmarks/results/offline_ablations --env-id cheetah_run \\
        --runs paper_defaults:0.45 paper_defaults:1.0 lr_3e-4:0.45 lr_3e-4:1.0 --out docs/figures/offline_gap

Reads <results>/<name>/<env_id>/alpha_<α>/seed_*/*/results.json (benchmarks/sweep.py's layout). Left: mean
evaluation return over seeds (±95 % t-interval) at every evaluation; right: the policy's mean stddev over the
last logged batch (`losses/pi_stddev_mean`, logged by every offline script). Writes <out>.png and <out>.json
(per run: steps, per-seed returns and stddevs).
"""

import argparse
import glob
import json
import os

import numpy as np
from aggregate import mean_ci95


def load(results: str, env_id: str, name: str, alpha: str) -> dict:
    """Per-seed evaluation means and policy stddevs of one cell, on the evaluation steps all seeds share."""
    paths = sorted(
        glob.glob(os.path.join(results, name, env_id, f"alpha_{alpha}", "seed_*", "*", "results.json"))
    )
    runs = [json.load(open(p))["evaluations"] for p in paths]
    if not runs:
        raise SystemExit(
            f"error: no results for {name} α={alpha} on {env_id} under {results}; run its grid first"
        )
    steps = sorted(set.intersection(*({e["step"] for e in r} for r in runs)))

    def pick(run: list, value) -> list:
        return [next(value(e) for e in run if e["step"] == s) for s in steps]

    returns = [pick(r, lambda e: e["mean"]) for r in runs]
    stddev = [pick(r, lambda e: e["diagnostics"].get("losses/pi_stddev_mean", np.nan)) for r in runs]
    return {"steps": steps, "returns": returns, "stddev": stddev, "seeds": len(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a sweep's results directory")
    parser.add_argument("--env-id", default="cheetah_run")
    parser.add_argument("--runs", nargs="+", required=True, help="NAME:ALPHA cells, e.g. paper_defaults:0.45")
    parser.add_argument("--out", required=True, help="output path without extension")
    opts = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {run: load(opts.results, opts.env_id, *run.split(":")) for run in opts.runs}
    fig, (ax_ret, ax_std) = plt.subplots(1, 2, figsize=(10, 3.8))
    for run, d in data.items():
        name, alpha = run.split(":")
        label = f"{name}, α = {alpha} ({d['seeds']} seeds)"
        for ax, key in ((ax_ret, "returns"), (ax_std, "stddev")):
            mean, half = mean_ci95(d[key])
            half = 0.0 if half is None else half  # one seed: no band
            line = ax.plot(d["steps"], mean, marker="o", label=label)[0]
            ax.fill_between(d["steps"], mean - half, mean + half, color=line.get_color(), alpha=0.15)
    ax_ret.set(xlabel="learner step", ylabel="evaluation return", title=f"{opts.env_id}: return (±95 % CI)")
    ax_std.set(xlabel="learner step", ylabel="policy stddev (batch mean)", title="policy stddev")
    ax_ret.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    fig.savefig(opts.out + ".png", dpi=100)
    with open(opts.out + ".json", "w") as f:
        json.dump({"env_id": opts.env_id, "results": opts.results, "runs": data}, f, indent=1)
    print(f"wrote {opts.out}.png and {opts.out}.json")


if __name__ == "__main__":
    main()
