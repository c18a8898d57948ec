"""benchmarks/vs_d3rlpy.py --quality --summary: the table of finished cells, the best-α rows, no training."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_cell(out, tag: str, learner: str, seed: int, final: float) -> None:
    run = out / tag / learner / f"seed_{seed}" / "run"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"final": {"mean": final}}))


def test_summary_tabulates_every_dataset_and_picks_the_best_alpha_once_all_are_finished(tmp_path):
    finals = {"d3rlpy_crr": 100.0, "dime_bc": 150.0, "dime_bc_a0.1": 90.0, "dime_bc_a0.5": 140.0}
    finals["dime_bc_a0.9"] = 170.0
    for seed in (1, 2):
        for learner, final in finals.items():
            write_cell(tmp_path, "cheetah_run", learner, seed, final + seed)
        write_cell(tmp_path, "cheetah_run_random0.5", "dime_bc", seed, 50.0 + seed)  # no other α there
    write_cell(tmp_path, "cheetah_run", "dime_awbc", 1, 120.0)  # one seed: no best-α row for AWBC
    command = [sys.executable, "benchmarks/vs_d3rlpy.py", "--quality", "--summary", "--seeds", "1", "2"]
    done = subprocess.run([*command, "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = json.loads((tmp_path / "table.json").read_text())["final_returns"]
    assert set(table) == {"cheetah_run", "cheetah_run_random0.5"}
    assert table["cheetah_run"]["dime_bc best α"] == [171.0, 172.0]  # α = 0.9
    assert table["cheetah_run_random0.5"]["dime_bc best α"] == []  # its other α have not run
    assert table["cheetah_run"]["dime_awbc best α"] == [] and table["cheetah_run"]["dime_awbc"] == [120.0]
    text = (tmp_path / "table.md").read_text()
    assert "| dime_bc best α | 171.5 ± 6.4 (171.0, 172.0, α = 0.9) | – |" in text
    assert "ls_ml" not in text  # learners without a finished cell are left out


def test_summary_of_a_missing_folder_is_one_line_and_exit_1(tmp_path):
    command = [sys.executable, "benchmarks/vs_d3rlpy.py", "--quality", "--summary", "--out", str(tmp_path)]
    command[-1] += "/none"
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0
    assert "holds no quality cells" in done.stderr
