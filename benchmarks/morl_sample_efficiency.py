"""Sample efficiency of dime_morl.py: return against env steps, learner steps and wall time, per setting.

    python benchmarks/morl_sample_efficiency.py RUN_DIR [RUN_DIR ...] --out docs/figures/morl_finger_spin

Every RUN_DIR is a dime_morl.py run directory (args.json, TensorBoard events, and results.json or, for a run
stopped early, checkpoint.pt). Each evaluation gives a point: env steps and learner steps from the run's
evaluation records, wall time from the TensorBoard event of `eval/episodic_return` (seconds since the
writer opened, evaluation time included). A run is labelled by its replay ratio and N.

Beside them: the SAC baseline curve that TD-MPC2's repository publishes for the same task (REFERENCE; its
`step` column as logged there: TD-MPC2's own DMControl wrapper repeats every action twice, and the file does
not say whether its SAC runs used that wrapper, so it may count half the simulator steps ours count).
Writes <out>.json (every point), <out>.md (a table at --marks env steps) and <out>.png (two panels).
"""

import argparse
import glob
import json
import os

# nicklashansen/tdmpc2, results/sac/<file>.csv at commit 88095e7899497cf7a1da36fb6bbb6bc7b5370d53:
# task -> (file, {step: return of each of its 3 seeds})
SOURCE = "SAC, TD-MPC2 repository (Hansen et al., 2024), results/sac/{}.csv @ 88095e7"
PUBLISHED = {
    "finger_spin": (
        "finger-spin",
        {1e5: [769.6, 774.1, 743.5], 2e5: [811.0, 831.3, 779.2], 3e5: [837.8, 883.8, 809.7]},
    ),
    "cartpole_swingup": (
        "cartpole-swingup",
        {1e5: [844.8, 825.8, 834.3], 2e5: [845.0, 842.7, 838.3], 3e5: [835.4, 853.0, 829.0]},
    ),
}
REFERENCE = {
    task: {"source": SOURCE.format(name), "returns": curve} for task, (name, curve) in PUBLISHED.items()
}


def load_run(run_dir: str) -> dict:
    """The run's setting and its evaluation points (env steps, learner steps, wall minutes, return)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = json.load(open(os.path.join(run_dir, "args.json")))
    results = os.path.join(run_dir, "results.json")
    if os.path.exists(results):
        evaluations = json.load(open(results))["evaluations"]
    else:  # stopped early: the checkpoint's TrainState holds the evaluations so far
        import torch

        ckpt = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=True)
        evaluations = ckpt["state"]["evaluations"]
    (events,) = glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))
    accumulator = EventAccumulator(events, size_guidance={"scalars": 0})
    accumulator.Reload()
    start = accumulator.FirstEventTimestamp()
    wall = {e.step: (e.wall_time - start) / 60 for e in accumulator.Scalars("eval/episodic_return")}
    points = [(e["env_steps"], e["step"], wall.get(e["step"]), e["mean"][0]) for e in evaluations]
    label = f"replay ratio {args['replay_ratio']:g}, N = {args['num_samples']}"
    return {"dir": run_dir, "env_id": args["env_id"], "label": label, "args": args, "points": points}


def table(runs: list[dict], marks: list[int]) -> str:
    """Markdown: per run, the return of the last evaluation at or before each mark (with learner steps and
    minutes), and the reference's mean over its seeds where it has the mark."""
    lines = ["| setting | " + " | ".join(f"{m // 1000}k env steps" for m in marks) + " |"]
    lines.append("|---" * (len(marks) + 1) + "|")
    for run in runs:
        cells = []
        for mark in marks:
            before = [p for p in run["points"] if p[0] <= mark]
            env, learner, minutes, ret = before[-1]
            when = f"{learner / 1000:.1f}k steps, {minutes or float('nan'):.0f} min"
            cells.append(f"{ret:.1f} ({when})" if env == mark else f"{ret:.1f} (at {env // 1000}k; {when})")
        lines.append(f"| {run['label']} | {' | '.join(cells)} |")
    reference = REFERENCE.get(runs[0]["env_id"])
    if reference:
        cells = []
        for mark in marks:
            seeds = reference["returns"].get(mark)
            cells.append(f"{sum(seeds) / len(seeds):.1f}" if seeds else "")
        lines.append(f"| {reference['source']} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_steps, by_time) = plt.subplots(1, 2, figsize=(10, 3.8))
    for run in runs:
        env, _, minutes, ret = zip(*run["points"])
        by_steps.plot(env, ret, marker="o", ms=3, label=run["label"])
        timed = [(m, r) for m, r in zip(minutes, ret) if m is not None]
        by_time.plot(*zip(*timed), marker="o", ms=3, label=run["label"])
    reference = REFERENCE.get(runs[0]["env_id"])
    if reference:
        steps = sorted(reference["returns"])
        means = [sum(reference["returns"][s]) / len(reference["returns"][s]) for s in steps]
        by_steps.plot(
            steps, means, "k--", marker="s", ms=4, label=reference["source"].split(",")[0] + " (TD-MPC2 repo)"
        )
    by_steps.set(xlabel="env steps", ylabel="return of the policy mean", title=runs[0]["env_id"])
    by_time.set(xlabel="wall time (min, one thread)", title="same runs against wall time")
    by_steps.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="dime_morl.py run directories, one per setting")
    parser.add_argument("--marks", type=int, nargs="+", default=[40_000, 64_000, 88_000, 100_000])
    parser.add_argument("--out", required=True, help="output path without extension")
    opts = parser.parse_args()
    runs = sorted((load_run(d) for d in opts.runs), key=lambda r: r["args"]["replay_ratio"])
    text = table(runs, opts.marks)
    print(text)
    with open(opts.out + ".md", "w") as f:
        f.write(text)
    with open(opts.out + ".json", "w") as f:
        keep = [{k: r[k] for k in ("label", "env_id", "points")} | {"args": r["args"]} for r in runs]
        json.dump({"runs": keep, "reference": REFERENCE.get(runs[0]["env_id"])}, f, indent=1)
    plot(runs, opts.out + ".png")


if __name__ == "__main__":
    main()
