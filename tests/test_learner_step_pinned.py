"""One learner step per script gives the numbers it gave when they were recorded: every logged statistic of
the second step of a fixed tiny problem (the first moved the networks and duals once), within 1e-6 relative.

A change meant only to reorganise a script (names, grouping, helpers) must keep these. A change to the
algorithm moves them on purpose: record them again with `python tests/test_learner_step_pinned.py`, and say
why in the commit."""

import json
import os
import sys

import pytest
import torch
from test_bf16 import OFFLINE, offline_setup, online_setup

SCRIPTS = [*OFFLINE, "dime_finetune", "dime_morl"]
PINNED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "learner_step_pinned.json")


def second_step_stats(script: str) -> dict[str, float]:
    """Every statistic the second learner step logs, as floats."""
    torch.manual_seed(0)
    setup = online_setup if script in ("dime_finetune", "dime_morl") else offline_setup
    module, args, agent, step = setup(script)
    optimizers = module.make_optimizers(agent, args)
    gen = torch.Generator().manual_seed(1)
    step(agent, optimizers, args, gen)
    stats = step(agent, optimizers, args, gen)
    return {key: float(value) for key, value in sorted(stats.items())}


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_learner_step_gives_the_recorded_statistics(script):
    recorded = json.load(open(PINNED))[script]
    stats = second_step_stats(script)
    assert sorted(stats) == sorted(recorded), "logged keys changed: old runs no longer compare"
    for key, value in recorded.items():
        assert stats[key] == pytest.approx(value, rel=1e-6, abs=1e-8), key


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    torch.set_num_threads(1)
    table = {script: second_step_stats(script) for script in SCRIPTS}
    with open(PINNED, "w") as f:
        json.dump(table, f, indent=1)
    print(f"recorded {sum(map(len, table.values()))} statistics of {len(table)} scripts in {PINNED}")
