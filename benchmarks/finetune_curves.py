"""Finetuning curves (paper Fig. 3/10): α ∈ {0, 0.25, 0.5, 1, learned} from a zoo teacher, per task.

    python benchmarks/finetune_curves.py --tasks cartpole_swingup cheetah_run --env-steps 200000 --workers 2
    python benchmarks/finetune_curves.py --grid benchmarks/grids/finetune_curves.yaml   # tabulate, run none

Runs the unchanged `dime_finetune.py` once per task, trade-off and seed (one process per run, --workers at a
time, one thread each; finished runs are reused), then plots evaluation return against env steps with the
teacher's return as a dashed line, and the learned α over time, to --figure; the final returns and
commands go to --json. The claim to check: the learned α ends above the teacher and learns faster than α = 0.

--grid GRID reads the finished cells of a sweep grid of dime_finetune.py runs (benchmarks/sweep.py) instead:
one row of panels per --method, curves as mean ± 95 % interval over seeds (on the evaluations all seeds
share), final_returns in --json as "<task> <method> <α>" -> one value per seed, and the paper's claims per
task and method: the learned α ends at or above the teacher and α = 1, and reaches the teacher's return in
at least 3× fewer env steps than α = 0 (first evaluation where the seed-mean curve is at or above the
teacher's return; "never" within the budget counts as more than the budget).
"""

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import sweep  # benchmarks/sweep.py: the grid runner; its cells are read here
from aggregate import mean_ci95  # mean over seeds and its 95 % t-interval

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
    found = sweep.results_in(os.path.join(opts.out, job["name"]))
    return json.load(open(found)) if found else None


def run(job: dict, opts) -> None:
    result = sweep.run_logged(job["command"], os.path.join(opts.out, job["name"]))
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


# ---------------------------------------------------------------------------------------------- --grid
def grid_runs(grid_path: str) -> dict:
    """(task, method, α label) -> {seed: results} of a grid's finished dime_finetune cells."""
    grid = sweep.read_grid(grid_path)
    runs = {}
    for cell in sweep.expand(grid, os.path.join(ROOT, grid.get("out", "runs"))):
        found = sweep.finished(cell)
        if found is None:
            continue
        result = json.load(open(found))
        label = "learned" if "--learn-alpha" in cell.flags else f"{cell.alpha:g}"
        runs.setdefault((cell.env_id, result["args"]["method"], label), {})[cell.seed] = result
    return runs


def curve(by_seed: dict) -> dict:
    """Env steps shared by all seeds, and per-seed returns and α at those evaluations."""
    steps = sorted(set.intersection(*({e["env_steps"] for e in r["evaluations"]} for r in by_seed.values())))
    pick = lambda r, key: [next(e[key] for e in r["evaluations"] if e["env_steps"] == s) for s in steps]
    returns = [pick(r, "mean") for r in by_seed.values()]
    return {"env_steps": steps, "returns": returns, "alpha": [pick(r, "alpha") for r in by_seed.values()]}


def steps_to_reach(c: dict, level: float) -> float:
    """First env step at which the seed-mean return is at or above `level` (inf if never)."""
    mean = np.mean(c["returns"], 0)
    return next((s for s, m in zip(c["env_steps"], mean) if s > 0 and m >= level), float("inf"))


def mean_final(by_seed: dict) -> float:
    """Mean over seeds of the final evaluation's return."""
    return float(np.mean([r["final"]["mean"] for r in by_seed.values()]))


def grid_claims(runs: dict) -> list[dict]:
    """Per task and method: the learned α's final return against the teacher's and α = 1's (mean, and seeds at
    or above the teacher), its env steps to the teacher's return against α = 0's, and to α = 0's final return
    against α = 0's own (the speed-up a budget too short for the teacher's return can still show)."""
    out = []
    for task, method in sorted({(t, m) for t, m, _ in runs}):
        learned, zero, one = (runs.get((task, method, a)) for a in ("learned", "0", "1"))
        if not learned:
            continue
        teacher = float(np.mean([r["teacher"]["mean"] for r in learned.values()]))
        final, half = mean_ci95([r["final"]["mean"] for r in learned.values()])
        claim = {"task": task, "method": method, "teacher": teacher, "seeds": len(learned)}
        claim.update(learned_final=final, learned_interval=half)
        claim["ends_above_teacher"] = claim["learned_final"] >= teacher
        claim["seeds_above_teacher"] = sum(r["final"]["mean"] >= teacher for r in learned.values())
        if one:
            claim["alpha_1_final"] = mean_final(one)
            claim["ends_above_alpha_1"] = claim["learned_final"] >= claim["alpha_1_final"]
        if zero:
            learned_curve, zero_curve = curve(learned), curve(zero)
            fast, slow = steps_to_reach(learned_curve, teacher), steps_to_reach(zero_curve, teacher)
            budget = max(e["env_steps"] for r in zero.values() for e in r["evaluations"])
            claim.update(steps_learned=fast, steps_alpha_0=slow, budget=budget)
            claim["three_times_faster"] = fast < float("inf") and min(slow, budget) >= 3 * fast
            zero_final = mean_final(zero)
            claim.update(
                alpha_0_final=zero_final,
                steps_learned_to_alpha_0_final=steps_to_reach(learned_curve, zero_final),
                steps_alpha_0_to_its_final=steps_to_reach(zero_curve, zero_final),
            )
        out.append(claim)
    return out


def claims_markdown(claims: list[dict]) -> str:
    steps = lambda v: "never" if v == float("inf") else f"{v / 1000:.1f}k"
    verdict = lambda c, k: "–" if k not in c else ("holds" if c[k] else "does not hold")
    columns = ["task", "method", "seeds", "teacher", "learned α final", "seeds ≥ teacher", "α = 1 final"]
    columns += [
        "env steps to the teacher: learned / α = 0",
        "env steps to α = 0's final return: learned / α = 0",
    ]
    columns += ["ends ≥ teacher", "ends ≥ α = 1", "≥ 3× faster than α = 0"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for c in claims:
        cells = [c["task"], c["method"], str(c["seeds"]), f"{c['teacher']:.1f}"]
        half = c["learned_interval"]
        cells.append(f"{c['learned_final']:.1f}" + (f" ± {half:.1f}" if half is not None else ""))
        cells.append(f"{c['seeds_above_teacher']} of {c['seeds']}")
        cells.append(f"{c['alpha_1_final']:.1f}" if "alpha_1_final" in c else "–")
        reach = (
            "–" if "steps_learned" not in c else f"{steps(c['steps_learned'])} / {steps(c['steps_alpha_0'])}"
        )
        cells.append(reach)
        if "alpha_0_final" in c:
            fast, slow = c["steps_learned_to_alpha_0_final"], c["steps_alpha_0_to_its_final"]
            ratio = f" ({slow / fast:.1f}×)" if 0 < fast < float("inf") else ""
            cells.append(f"{c['alpha_0_final']:.1f}: {steps(fast)} / {steps(slow)}{ratio}")
        else:
            cells.append("–")
        cells += [verdict(c, k) for k in ("ends_above_teacher", "ends_above_alpha_1", "three_times_faster")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_grid(runs: dict, path: str) -> dict:
    """One row of return panels per method (task columns), α of the learned runs below; final returns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, methods = sorted({k[0] for k in runs}), sorted({k[1] for k in runs})
    rows = len(methods) + 1
    fig, axes = plt.subplots(
        rows, len(tasks), figsize=(5 * len(tasks), 3 * rows), squeeze=False, sharex="col"
    )
    finals = {}
    for col, task in enumerate(tasks):
        for row, method in enumerate(methods):
            ax = axes[row][col]
            for i, label in enumerate(TRADEOFFS):  # one colour per α in every panel
                by_seed = runs.get((task, method, label))
                if not by_seed:
                    continue
                c = curve(by_seed)
                mean, half = mean_ci95(c["returns"])
                half = 0.0 if half is None else half  # one seed: no band
                name = "learned α" if label == "learned" else f"α = {label}"
                line = ax.plot(
                    c["env_steps"], mean, color=f"C{i}", lw=2 if label == "learned" else 1, label=name
                )[0]
                ax.fill_between(c["env_steps"], mean - half, mean + half, color=line.get_color(), alpha=0.15)
                finals[f"{task} {method} {label}"] = [r["final"]["mean"] for r in by_seed.values()]
                if label == "learned":  # each seed's α (the handover is abrupt; a seed-mean would blur it)
                    colour = f"C{row}"
                    for seed, alpha in enumerate(c["alpha"]):
                        label_ = f"{method} (one line per seed)" if seed == 0 else None
                        axes[-1][col].plot(
                            c["env_steps"], alpha, color=colour, ls="-:"[row % 2], lw=1.2, label=label_
                        )
                teacher = np.mean([r["teacher"]["mean"] for r in by_seed.values()])
            ax.axhline(teacher, color="k", ls="--", label="teacher")
            ax.set(title=f"{task}, {method} (mean ± 95 % CI over seeds)", ylabel="episode return")
            ax.legend(fontsize=7)
        axes[-1][col].set(xlabel="env steps", ylabel="learned α", ylim=(0, 1))
        axes[-1][col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return finals


def write_grid(opts) -> None:
    runs = grid_runs(opts.grid)
    if not runs:
        sys.exit(f"error: no cell of {opts.grid} has finished; run it with benchmarks/sweep.py first")
    finals, claims = plot_grid(runs, opts.figure), grid_claims(runs)
    text = claims_markdown(claims)
    print(text)
    with open(opts.json, "w") as f:
        json.dump({"final_returns": finals, "claims": claims, "grid": opts.grid}, f, indent=1, default=str)


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
    parser.add_argument("--grid", help="plot and check a sweep grid's finished cells (benchmarks/sweep.py)")
    opts = parser.parse_args()
    if opts.grid:
        return write_grid(opts)
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
