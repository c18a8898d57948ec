"""How much of each script is the algorithm: non-blank lines per part.

    python benchmarks/count_lines.py

Counted from the section headers (`# ==== N. ...`): the algorithm is sections 3-8 (networks, C51 critic,
E-step, M-step, policy objective, replay, learner step), from the line of section 3's header to the banner
that ends the algorithm; the harness is everything else (module docstring, imports, Args and flag checks,
environments and data loading, training loop, evaluation, logging, checkpoints, export). Blank lines are
not counted; comments and docstrings are.
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["dime_bc", "dime_awbc", "crr_ls", "dime_multi", "dime_finetune", "dime_morl"]
BANNER = "# The algorithm ends here"


def count(path: str) -> tuple[int, int, int]:
    """(all lines, non-blank algorithm lines, non-blank harness lines) of one script."""
    lines = open(path).read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# ==== 3."))
    end = next(i for i, line in enumerate(lines) if line.startswith(BANNER))
    algorithm = sum(1 for line in lines[start:end] if line.strip())
    harness = sum(1 for line in lines[:start] + lines[end:] if line.strip())
    return len(lines), algorithm, harness


def main() -> None:
    print(f"{'script':<15}{'lines':>6}{'algorithm':>11}{'harness':>9}{'algorithm %':>13}")
    for script in SCRIPTS:
        total, algorithm, harness = count(os.path.join(ROOT, f"{script}.py"))
        share = 100 * algorithm / (algorithm + harness)
        print(f"{script:<15}{total:>6}{algorithm:>11}{harness:>9}{share:>12.0f}%")


if __name__ == "__main__":
    main()
