"""benchmarks/continue_cells.py: a long grid's cell started from a short grid's finished run ends where an
uninterrupted long run ends; cells with other flags or a run already are left alone; the short run is kept."""

import json
import os
import sys

import numpy as np

from common import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import continue_cells  # noqa: E402
import sweep  # noqa: E402

TINY = "--eval-every 2 --eval-episodes 1 --hidden-sizes 8 --batch-size 4 --num-samples 2 --checkpoint-every 2"


def write_grid(path, out: str, steps: int, dataset: str, other_lr: float = 1e-4) -> str:
    """Two entries, both dime_bc α = 0.5 seed 1: `same`, and `other` with --lr `other_lr`."""
    runs = [
        {"name": "same", "script": "dime_bc"},
        {"name": "other", "script": "dime_bc", "flags": f"--lr {other_lr}"},
    ]
    grid = {"out": out, "env_ids": ["cartpole_swingup"], "alphas": [0.5], "seeds": [1], "runs": runs}
    grid["flags"] = f"{TINY} --total-steps {steps} --dataset {dataset} --no-cuda"
    path.write_text(json.dumps(grid))
    return str(path)


def evaluations(cell) -> list:
    return [(e["step"], e["mean"]) for e in json.load(open(sweep.finished(cell)))["evaluations"]]


def test_continued_cell_equals_an_uninterrupted_run(tmp_path):
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(101, 5))
    actions, rewards = rng.uniform(-1, 1, size=(100, 1)), rng.uniform(0, 1, size=100)
    ds = datasets.make_dataset(obs[:-1], actions, rewards, obs[1:], np.zeros(100), np.zeros(100))
    ds.env_id = "cartpole_swingup"
    data = str(tmp_path / "cartpole.hdf5")
    datasets.save_hdf5(ds, data)
    short = write_grid(tmp_path / "short.json", str(tmp_path / "short"), 4, data, other_lr=3e-4)
    long = write_grid(tmp_path / "long.json", str(tmp_path / "long"), 8, data)
    reference = write_grid(tmp_path / "reference.json", str(tmp_path / "reference"), 8, data)
    expand = lambda path: sweep.expand(*(lambda g: (g, g.pop("out")))(sweep.read_grid(path)))
    assert not sweep.sweep(expand(short), "local", workers=1)["failed"]
    short_results = sweep.finished(expand(short)[0])
    before = open(short_results).read(), os.path.getmtime(short_results)

    lines = continue_cells.continue_from(short, long, None)
    assert "continues" in lines[0] and "from learner step 4" in lines[0]
    assert "no finished run with the same flags" in lines[1]  # other: --lr differs
    assert continue_cells.continue_from(short, long, None)[0].endswith("has a run already, left as it is")
    assert not sweep.sweep(expand(long) + expand(reference), "local", workers=1)["failed"]

    continued, uninterrupted = expand(long)[0], expand(reference)[0]
    assert evaluations(continued) == evaluations(uninterrupted)  # steps 0, 2, ..., 8, exactly
    assert [s for s, _ in evaluations(continued)] == [0, 2, 4, 6, 8]
    assert evaluations(continued)[:3] == evaluations(expand(short)[0])
    args = json.load(open(sweep.finished(continued)))["args"]
    assert args["exp_name"] == "same" and args["output_dir"] == continued.directory
    assert (open(short_results).read(), os.path.getmtime(short_results)) == before
