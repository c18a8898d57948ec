"""benchmarks/reward_scale.py on made-up finished cells: per-c finals, the same-seed spread across c, the
diagnostics columns and the paired claim; cells missing at some c leave the spread to the seeds finished at
every c."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_cell(out, entry, alpha, seed, final, diagnostics, task="cheetah_run", before=None) -> None:
    """A finished cell; `before`: the return of an evaluation before the final one."""
    run = out / entry / task / f"alpha_{alpha}" / f"seed_{seed}" / "run"
    run.mkdir(parents=True)
    records = [] if before is None else [{"step": 15000, "mean": before}]
    records.append({"step": 20000, "mean": final, "diagnostics": diagnostics})
    (run / "results.json").write_text(json.dumps({"final": {"mean": final}, "evaluations": records}))


def run_script(results, out, *flags) -> dict:
    command = [sys.executable, "benchmarks/reward_scale.py", "--results", str(results), "--out", str(out)]
    done = subprocess.run(command + list(flags), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(out.with_suffix(".json").read_text())


def test_table_spread_and_diagnostics(tmp_path):
    finals = {("ls", 0.1): [100, 110], ("ls", 1.0): [200, 190], ("ls", 10.0): [150, 160]}
    finals |= {("dime_bc", 0.1): [180, 170], ("dime_bc", 1.0): [185, 175], ("dime_bc", 10.0): [190]}
    finals |= {
        ("dime_awbc", 0.1): [150, 160],
        ("dime_awbc", 1.0): [170, 150],
        ("dime_awbc", 10.0): [120, 150],
    }
    for (method, c), values in finals.items():
        alpha = {"ls": 0.3, "dime_bc": 0.45, "dime_awbc": 0.5}[method]
        for seed, final in enumerate(values, 1):
            diagnostics = {"losses/weight_ess": 0.5 * c, "losses/temperature": 2.0 * c}
            write_cell(tmp_path, f"{method}_c{c}", alpha, seed, final, diagnostics)
    summary = run_script(tmp_path, tmp_path / "figure")
    assert summary["ls/cheetah_run"]["spread"]["values"] == [100.0, 80.0]  # 200-100, 190-110
    assert summary["dime_bc/cheetah_run"]["spread"]["values"] == [10.0]  # seed 2 lacks c = 10
    assert summary["ls/cheetah_run"]["diagnostics"]["10.0"]["losses/weight_ess"] == 5.0
    claims = {c["claim"].split(" moves")[0]: c for c in summary["claims"]}
    assert claims["DiME (AWBC) α=.5"]["differences"] == [50.0, 70.0]  # LS 100, 80 against AWBC 50, 10
    assert claims["DiME (AWBC) α=.5"]["holds"] and not claims["DiME (AWBC) α=.5"]["separated"]
    assert "holds" not in claims["DiME (BC) α=.45"]  # one seed finished at every c: no verdict
    text = (tmp_path / "figure.md").read_text()
    assert "| LS α=.3 | cheetah_run | 105.0 ± 63.5 (n=2) | 195.0 ± 63.5 (n=2) |" in text
    assert os.path.getsize(tmp_path / "figure.png") > 0


def test_last_evaluations_and_claim_over_tasks(tmp_path):
    """--last 2 averages each run's last two evaluations; the claim pools the tasks' same-seed pairs."""
    results = tmp_path / "results"
    for task, spread in (("cheetah_run", 30.0), ("walker_stand", 10.0)):
        for seed in (1, 2):
            for c in (0.1, 1.0, 10.0):
                ls_final = 100.0 + (spread + 10 * seed if c == 10.0 else 0.0)  # LS spread: spread + 10·seed
                write_cell(results, f"ls_c{c}", 0.3, seed, ls_final, {}, task, before=100.0)
                dime_final = 100.0 + (spread if c == 10.0 else 0.0)  # DiME spread: spread
                write_cell(results, f"dime_bc_c{c}", 0.45, seed, dime_final, {}, task, before=100.0)
    summary = run_script(results, tmp_path / "last1")
    pooled = [c for c in summary["claims"] if c["task"] == "all tasks"]
    assert len(pooled) == 1 and pooled[0]["differences"] == [10.0, 20.0, 10.0, 20.0]
    assert pooled[0]["difference"] == 15.0 and pooled[0]["holds"]
    summary = run_script(results, tmp_path / "last2", "--last", "2")
    assert summary["ls/walker_stand"]["spread"]["values"] == [10.0, 15.0]  # (100 + 20) / 2 - 100, ...
    assert summary["ls/walker_stand"]["finals"]["10.0"]["returns"] == [110.0, 115.0]
    assert "mean of its last 2 evaluations" in (tmp_path / "last2.md").read_text()
