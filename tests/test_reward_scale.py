"""benchmarks/reward_scale.py on made-up finished cells: per-c finals, the same-seed spread across c, the
diagnostics columns and the paired claim; cells missing at some c leave the spread to the seeds finished at
every c."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_cell(out, entry: str, alpha: float, seed: int, final: float, diagnostics: dict) -> None:
    run = out / entry / "cheetah_run" / f"alpha_{alpha}" / f"seed_{seed}" / "run"
    run.mkdir(parents=True)
    record = {"step": 20000, "mean": final, "diagnostics": diagnostics}
    (run / "results.json").write_text(json.dumps({"final": {"mean": final}, "evaluations": [record]}))


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
    out = tmp_path / "figure"
    command = [sys.executable, "benchmarks/reward_scale.py", "--results", str(tmp_path), "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "figure.json").read_text())
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
