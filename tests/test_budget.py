"""benchmarks/budget.py on made-up finished cells: returns at the chosen steps, the orderings' same-seed
differences per task and pooled over tasks, --last K, and a cell missing a step left out."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_cell(out, method: str, task: str, seed: int, curve: dict) -> None:
    alpha = {"bc": 1.0, "ls": 0.3, "dime_bc": 0.45}[method]
    run = out / method / task / f"alpha_{alpha}" / f"seed_{seed}" / "run"
    run.mkdir(parents=True)
    evaluations = [{"step": step, "mean": ret} for step, ret in sorted(curve.items())]
    (run / "results.json").write_text(json.dumps({"evaluations": evaluations}))


def run_script(results, out, *flags) -> dict:
    command = [sys.executable, "benchmarks/budget.py", "--results", str(results), "--out", str(out)]
    done = subprocess.run(command + ["--steps", "20", "40", *flags], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(out.with_suffix(".json").read_text())


def test_returns_and_orderings(tmp_path):
    results = tmp_path / "results"
    for task, gain in (("cheetah_run", 10.0), ("walker_walk", 30.0)):
        for seed in (1, 2):
            write_cell(results, "bc", task, seed, {0: 0.0, 20: 100.0, 40: 100.0})
            write_cell(results, "ls", task, seed, {0: 0.0, 20: 120.0, 40: 110.0 + seed})
            dime = {0: 0.0, 20: 110.0, 40: 110.0 + seed + gain}  # DiME - LS at 40k: gain on every seed
            write_cell(results, "dime_bc", task, seed, dime)
    write_cell(results, "dime_bc", "walker_walk", 3, {0: 0.0, 20: 50.0})  # stopped before 40: left out there
    summary = run_script(results, tmp_path / "fig")
    assert summary["returns"]["dime_bc/walker_walk/20"]["returns"] == [110.0, 110.0, 50.0]
    assert summary["returns"]["dime_bc/walker_walk/40"]["seeds"] == [1, 2]
    rows = {(r["claim"], r["task"], r["step"]): r for r in summary["differences"]}
    ls_dime = "LS α=.3 < DiME (BC) α=.45"
    assert rows[(ls_dime, "cheetah_run", 20)]["differences"] == [-10.0, -10.0]
    assert rows[(ls_dime, "walker_walk", 40)]["differences"] == [30.0, 30.0]
    pooled = rows[(ls_dime, "all tasks", 40)]
    assert pooled["differences"] == [10.0, 10.0, 30.0, 30.0] and pooled["difference"] == 20.0
    assert pooled["holds"] and pooled["separated"]
    assert not rows[(ls_dime, "all tasks", 20)]["holds"]
    assert "| walker_walk | DiME (BC) α=.45 | 90.0 ± 86.1 (n=3) |" in (tmp_path / "fig.md").read_text()
    assert os.path.getsize(tmp_path / "fig.png") > 0
    summary = run_script(results, tmp_path / "last2", "--last", "2")  # 40k: mean of the 20k and 40k returns
    assert summary["returns"]["ls/cheetah_run/40"]["returns"] == [115.5, 116.0]
