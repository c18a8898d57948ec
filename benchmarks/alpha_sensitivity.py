"""What choosing α without a sweep costs: the return lost by one α everywhere against each dataset's best α.

    python benchmarks/alpha_sensitivity.py          # docs/figures/alpha_sensitivity.{md,json}

Reads finished runs, trains none: the offline grid on the four zoo tasks
(benchmarks/grids/offline_table_cpu.yaml: LS α ∈ {.1, .3, .5, .9}, DiME (BC) α ∈ {.1, .45, .5, .9},
DiME (AWBC) α ∈ {.1, .5, .9}) and the d3rlpy comparison's cheetah_run with 50 % random episodes
(DiME (BC) and (AWBC) over the same α; LS ran one α there, so it has no sweep to lose against). Seeds 1-3
everywhere.

For each method and dataset, the best α is the one with the highest mean final return over seeds; the loss
of a fixed α on a seed is best-α return minus fixed-α return on that seed, averaged over the method's
datasets, then mean ± 95 % interval over seeds, in return units and in % of the best-α return. Two fixed
choices: the paper's (LS .3, DiME (BC) .45, DiME (AWBC) .5) and the best single α across the datasets
(chosen on the same runs, so its loss is optimistic, as is every best α here). DiME is also given over the
four zoo tasks alone, LS's datasets.
"""

import argparse
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from aggregate import mean_ci95  # noqa: E402  (the Student t every table here uses)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID = os.path.join(ROOT, "benchmarks", "results", "offline_ablations")
QUALITY = os.path.join(ROOT, "benchmarks", "results", "vs_d3rlpy_quality")
PAPER = {"ls": 0.3, "dime_bc": 0.45, "dime_awbc": 0.5}
NAMES = {"ls": "LS", "dime_bc": "DiME (BC)", "dime_awbc": "DiME (AWBC)"}
TASKS = ("cheetah_run", "cartpole_swingup", "walker_walk", "walker_stand")
SEEDS = (1, 2, 3)


def final(pattern: str) -> float | None:
    found = glob.glob(pattern)
    return json.load(open(found[0]))["final"]["mean"] if found else None


def returns() -> dict:
    """{method: {dataset: {α: [return per seed]}}}, only (dataset, α) finished on every seed."""
    out: dict = {m: {} for m in PAPER}
    grid = {"ls": ("ls", (0.1, 0.3, 0.5, 0.9)), "dime_bc": ("paper_defaults", (0.1, 0.45, 0.5, 0.9))}
    grid["dime_awbc"] = ("dime_awbc", (0.1, 0.5, 0.9))
    for method, (entry, alphas) in grid.items():
        for task in TASKS:
            for a in alphas:
                runs = [
                    final(os.path.join(GRID, entry, task, f"alpha_{a}", f"seed_{s}", "*", "results.json"))
                    for s in SEEDS
                ]
                out[method].setdefault(task, {})[a] = runs
    quality = {"dime_bc": {0.45: "dime_bc", 0.1: "dime_bc_a0.1", 0.5: "dime_bc_a0.5", 0.9: "dime_bc_a0.9"}}
    quality["dime_awbc"] = {0.5: "dime_awbc", 0.1: "dime_awbc_a0.1", 0.9: "dime_awbc_a0.9"}
    for method, learners in quality.items():
        for a, learner in learners.items():
            cell = os.path.join(QUALITY, "cheetah_run_random0.5", learner)
            runs = [final(os.path.join(cell, f"seed_{s}", "**", "results.json")) for s in SEEDS]
            out[method].setdefault("cheetah_run:random=0.5", {})[a] = runs
    return {
        m: {d: {a: r for a, r in by_alpha.items() if None not in r} for d, by_alpha in data.items()}
        for m, data in out.items()
    }


def losses(by_dataset: dict, fixed: float) -> tuple[list, list]:
    """Per seed: mean over datasets of (best-α return - fixed-α return), absolute and in % of the best."""
    absolute, relative = [], []
    for by_alpha in by_dataset.values():
        best = max(by_alpha, key=lambda a: np.mean(by_alpha[a]))
        gap = np.array(by_alpha[best]) - np.array(by_alpha[fixed])
        absolute.append(gap)
        relative.append(100 * gap / np.array(by_alpha[best]))
    return np.mean(absolute, 0).tolist(), np.mean(relative, 0).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "figures", "alpha_sensitivity"))
    opts = parser.parse_args()
    data, report = returns(), {}
    lines = [
        "| method | datasets | fixed α | loss against each dataset's best α | in % | best α per dataset |"
    ]
    lines.append("|---|---|---|---|---|---|")
    sets = [(m, by_dataset, m) for m, by_dataset in data.items()]  # every dataset, then the zoo tasks alike
    sets += [(m, {d: v for d, v in data[m].items() if d in TASKS}, f"{m} (zoo)") for m in data if m != "ls"]
    for method, by_dataset, key in sets:
        alphas = set.intersection(*(set(v) for v in by_dataset.values()))
        by_dataset = {d: {a: v[a] for a in alphas} for d, v in by_dataset.items() if len(v) > 1}
        single = max(alphas, key=lambda a: np.mean([np.mean(v[a]) for v in by_dataset.values()]))
        bests = {d: max(v, key=lambda a: np.mean(v[a])) for d, v in by_dataset.items()}
        report[key] = {"datasets": list(by_dataset), "best_alpha": bests, "returns": by_dataset}
        for label, fixed in (("paper", PAPER[method]), ("best single", single)):
            absolute, relative = losses(by_dataset, fixed)
            report[key][label] = {"alpha": fixed, "loss": absolute, "loss_percent": relative}
            (m, h), (mr, hr) = mean_ci95(absolute), mean_ci95(relative)
            best_text = ", ".join(f"{d} {a:g}" for d, a in bests.items())
            row = f"| {NAMES[method]} | {len(by_dataset)} | {label}: {fixed:g} | {m:.1f} ± {h:.1f} "
            lines.append(row + f"| {mr:.1f} ± {hr:.1f} % | {best_text} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    with open(opts.out + ".md", "w") as f:
        f.write(text)
    with open(opts.out + ".json", "w") as f:
        json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
