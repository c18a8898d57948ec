"""The learned trade-off of dime_finetune.py runs over time: α and the gap E[Q] - c that drives it.

    python benchmarks/tradeoff_trace.py \\
        fixed-c=benchmarks/results/finetune_threshold/fixed_c_from_returns/cartpole_swingup/seed_1 \\
        returns=benchmarks/results/finetune_curves/dime_learned/cartpole_swingup/alpha_0.5/seed_1 \\
        --out docs/figures/finetune_threshold

Each LABEL=DIR is a `--learn-alpha` run (or a sweep cell holding one). Reads the run's TensorBoard scalars
(`charts/tradeoff`, and the gap of J(α) = α·(E[Q] - c): `losses/return_minus_threshold`, or
`losses/q_minus_threshold` for runs that took E[Q] from the critic) and its results.json (evaluations,
teacher). Writes <out>.png (return, α and the gap against learner steps) and <out>.json (the same numbers),
so the figure can be remade without the event files, which git does not keep.
"""

import argparse
import glob
import json
import os

GAP_TAGS = ("losses/return_minus_threshold", "losses/q_minus_threshold")  # E[Q] from returns, from the critic


def run_dir(path: str) -> str:
    """The run directory: `path` itself, or the one run directory inside a sweep cell."""
    if glob.glob(os.path.join(path, "results.json")):
        return path
    found = sorted(glob.glob(os.path.join(path, "*", "results.json")))
    if not found:
        raise SystemExit(f"error: no results.json in {path} or its run directories; pass a finished run")
    return os.path.dirname(found[-1])


def trace(path: str) -> dict:
    """Learner-step traces of α and E[Q] - c, and the evaluations, of one run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    directory = run_dir(path)
    events = EventAccumulator(directory, size_guidance={"scalars": 0})
    events.Reload()
    logged = events.Tags()["scalars"]
    gap_tag = next((t for t in GAP_TAGS if t in logged), None)
    if gap_tag is None:
        raise SystemExit(f"error: {directory} logged no learned trade-off; pass a --learn-alpha run")
    alpha, gap = ({e.step: e.value for e in events.Scalars(t)} for t in ("charts/tradeoff", gap_tag))
    steps = sorted(gap)
    with open(os.path.join(directory, "results.json")) as f:
        results = json.load(f)
    return {
        "run": directory,
        "steps": steps,
        "alpha": [alpha[s] for s in steps],
        "gap": [gap[s] for s in steps],
        "gap_of": gap_tag,
        "eval_steps": [e["step"] for e in results["evaluations"]],
        "eval_returns": [e["mean"] for e in results["evaluations"]],
        "teacher": results["teacher"]["mean"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="LABEL=DIR: a --learn-alpha run or the sweep cell holding it")
    parser.add_argument("--out", required=True, help="output path without extension")
    opts = parser.parse_args()
    if not all("=" in r for r in opts.runs):
        raise SystemExit("error: give every run as LABEL=DIR, e.g. measured-c=benchmarks/results/...")
    data = {label: trace(path) for label, path in (r.split("=", 1) for r in opts.runs)}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ret, ax_alpha, ax_q) = plt.subplots(1, 3, figsize=(14, 3.8))
    for i, (label, d) in enumerate(data.items()):
        color = f"C{i}"
        ax_ret.plot(d["eval_steps"], d["eval_returns"], marker="o", color=color, label=label)
        ax_alpha.plot(d["steps"], d["alpha"], color=color, label=label)
        ax_q.plot(d["steps"], d["gap"], color=color, label=label)
    ax_ret.axhline(next(iter(data.values()))["teacher"], color="k", ls=":", label="teacher")
    ax_ret.set(xlabel="learner step", ylabel="evaluation return", title="return of the policy mean")
    ax_alpha.set(xlabel="learner step", ylabel="α (weight of the teacher)", ylim=(0, 1), title="learned α")
    ax_q.set(xlabel="learner step", ylabel="gap (each run's scale)", title="E[Q] - c (α falls above 0)")
    ax_q.axhline(0.0, color="k", lw=0.5)
    for ax in (ax_ret, ax_alpha, ax_q):
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    fig.savefig(opts.out + ".png", dpi=100)
    with open(opts.out + ".json", "w") as f:
        json.dump(data, f, indent=1)
    print(f"wrote {opts.out}.png and {opts.out}.json")


if __name__ == "__main__":
    main()
