"""The per-behaviour table and the return histogram of a task's default zoo dataset (docs/datasets.md).

    python benchmarks/zoo_tables.py walker_stand --edges 0 100 200 300 400 500 600 700 800 1000

The zoo dataset's first 10 % of episodes act uniformly at random; episode e of the others follows zoo
policy e mod 3, worst to best (common.datasets.build_zoo_dataset), so each episode's behaviour is known
from its index. Builds the dataset on first use.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.datasets import load_zoo, zoo_policies  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("env_id")
    parser.add_argument("--edges", type=float, nargs="+", required=True, help="histogram bin edges")
    parser.add_argument("--random-fraction", type=float, default=0.1, help="as the dataset was built")
    opts = parser.parse_args()
    returns = load_zoo(opts.env_id, random_fraction=opts.random_fraction).episode_returns()
    num_random, names = (
        int(round(opts.random_fraction * len(returns))),
        [e["name"] for e in zoo_policies(opts.env_id)],
    )
    groups = [("uniform random", returns[:num_random])]
    groups += [
        (f"zoo `{name}` + noise", returns[num_random:][i :: len(names)]) for i, name in enumerate(names)
    ]
    print("| behaviour | episodes | min | median | max |\n|---|---|---|---|---|")
    for name, g in groups:
        print(f"| {name} | {len(g)} | {g.min():.1f} | {np.median(g):.1f} | {g.max():.1f} |")
    counts, edges = np.histogram(returns, bins=opts.edges)[0], opts.edges
    print("\n| return | " + " | ".join(f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:])) + " |")
    print("|---" * len(edges) + "|")
    print("| episodes | " + " | ".join(str(c) for c in counts) + " |")


if __name__ == "__main__":
    main()
