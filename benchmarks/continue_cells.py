"""Start a longer grid's cells from a shorter grid's finished cells that ran the same flags but --total-steps.

    cd dime-rl     # the repository root, as for sweep.py: the grids' `out` is relative to it
    python benchmarks/continue_cells.py benchmarks/grids/reward_scale.yaml \\
        benchmarks/grids/offline_budget.yaml --env-ids cheetah_run
    python benchmarks/sweep.py benchmarks/grids/offline_budget.yaml --env-ids cheetah_run --seeds 1

A cell of the long grid with no run yet gets a copy of the short grid's run of the same script, task, α and
seed when that run finished, its flags are the same once --total-steps is set aside, and its checkpoint was
written at its last learner step (after its final evaluation). The copy holds the checkpoint, args.json and
the TensorBoard events, with --exp-name and --output-dir rewritten to the long cell's: they say where the run
lives, and no learner reads them. The sweep then continues the cell with --resume, which continues exactly
(tests/test_robustness.py), so the long run's evaluations up to the short budget are the short run's, and the
compute of those steps is not spent twice. The short grid's files are only read. One line per long cell.
"""

import argparse
import glob
import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sweep import expand, read_grid, results_in  # noqa: E402

BOOKKEEPING = ("exp_name", "output_dir")  # where a run lives: rewritten in the copy


def flag_values(flags: tuple[str, ...]) -> dict:
    """{--flag: its values} of a cell's flags, --total-steps set aside ("-15" is a value, "--x" a flag)."""
    parsed: dict = {}
    for token in flags:
        if token.startswith("--"):
            key = token
            parsed[key] = []
        else:
            parsed[key].append(token)
    parsed.pop("--total-steps", None)
    return parsed


def continue_from(short_grid: str, long_grid: str, env_ids: list[str] | None) -> list[str]:
    """Copy every matching finished short run into its long cell; one line per long cell."""
    short, long = read_grid(short_grid), read_grid(long_grid)
    short_cells = expand(short, short.pop("out"))
    lines = []
    for cell in expand(long, long.pop("out")):
        if env_ids and cell.env_id not in env_ids:
            continue
        if glob.glob(os.path.join(glob.escape(cell.directory), "*", "")):
            lines.append(f"{cell.label()}: has a run already, left as it is")
            continue
        match = [
            c
            for c in short_cells
            if (c.script, c.env_id, c.alpha, c.seed) == (cell.script, cell.env_id, cell.alpha, cell.seed)
            and flag_values(c.flags) == flag_values(cell.flags)
        ]
        results = results_in(match[0].directory) if match else None
        if results is None:
            lines.append(f"{cell.label()}: no finished run with the same flags in {short_grid}")
            continue
        source = os.path.dirname(results)
        ckpt = torch.load(os.path.join(source, "checkpoint.pt"), map_location="cpu", weights_only=True)
        steps = json.load(open(results))["learner_steps"]
        if ckpt["state"]["learner_steps"] != steps:
            lines.append(
                f"{cell.label()}: {source}'s checkpoint is not at its last step ({steps}), not copied"
            )
            continue
        name = os.path.basename(source).replace(f"__{match[0].name}__", f"__{cell.name}__")
        target = os.path.join(cell.directory, name)
        os.makedirs(target)
        for events in glob.glob(os.path.join(source, "events.out.tfevents.*")):
            shutil.copy2(events, target)
        where = dict(zip(BOOKKEEPING, (cell.name, cell.directory)))
        ckpt["args"].update(where)
        torch.save(ckpt, os.path.join(target, "checkpoint.pt"))
        args = json.load(open(os.path.join(source, "args.json")))
        args.update(where)
        with open(os.path.join(target, "args.json"), "w") as f:
            json.dump(args, f, indent=1)
        lines.append(f"{cell.label()}: continues {source} from learner step {steps}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("short_grid", help="the grid whose finished cells are continued")
    parser.add_argument("long_grid", help="the grid whose cells start from them")
    parser.add_argument("--env-ids", nargs="+", help="only these tasks of the long grid")
    opts = parser.parse_args()
    for line in continue_from(opts.short_grid, opts.long_grid, opts.env_ids):
        print(line)


if __name__ == "__main__":
    main()
