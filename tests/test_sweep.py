"""benchmarks/sweep.py and aggregate.py: a real 8-cell grid, skip, rerun, resume, submitit, tables."""

import argparse
import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from common import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import aggregate  # noqa: E402
import sweep  # noqa: E402

TINY = "--total-steps 2 --eval-every 2 --eval-episodes 1 --hidden-sizes 8 --batch-size 4 --num-samples 2"
TINY += " --checkpoint-every 0 --no-cuda"


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> dict:
    """crr_ls and dime_bc × α ∈ {0.3, 0.5} × seeds {1, 2} on a 100-step random cartpole_swingup episode
    (observation dims 5, action dims 1; written as in test_offline.py, without stepping the env)."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(101, 5))
    actions, rewards = rng.uniform(-1, 1, size=(100, 1)), rng.uniform(0, 1, size=100)
    ds = datasets.make_dataset(obs[:-1], actions, rewards, obs[1:], np.zeros(100), np.zeros(100))
    ds.env_id = "cartpole_swingup"
    path = str(tmp_path_factory.mktemp("data") / "cartpole.hdf5")
    datasets.save_hdf5(ds, path)
    return dict(
        scripts=["crr_ls", "dime_bc"],
        env_ids=["cartpole_swingup"],
        alphas=[0.3, 0.5],
        seeds=[1, 2],
        flags=f"{TINY} --dataset {path}",
    )


@pytest.fixture(scope="module")
def swept(grid, tmp_path_factory) -> tuple[list, dict]:
    """The grid run once through the local launcher, two cells at a time."""
    cells = sweep.expand(grid, str(tmp_path_factory.mktemp("sweep")))
    return cells, sweep.sweep(cells, "local", workers=2)


def ran(summary: dict) -> list:
    return [outcome["cell"] for outcome in summary["ran"]]


# ---------------------------------------------------------------------------------------------- sweep
def test_local_launcher_runs_every_cell_once(swept):
    cells, summary = swept
    assert len(cells) == 8 and sorted(ran(summary), key=cells.index) == cells
    assert summary["skipped"] == summary["failed"] == []
    for cell in cells:
        results = json.load(open(sweep.finished(cell)))
        assert (results["algo"], results["env_id"]) == (cell.script, "cartpole_swingup")
        assert (results["alpha"], results["seed"]) == (cell.alpha, cell.seed)
        assert os.path.exists(os.path.join(cell.directory, "sweep.log"))


def test_rerun_runs_nothing(swept):
    cells, _ = swept
    summary = sweep.sweep(cells, "local", workers=2)
    assert ran(summary) == [] and summary["failed"] == [] and len(summary["skipped"]) == 8


def test_deleting_one_results_json_reruns_exactly_that_cell_through_submitit(swept, tmp_path):
    """The slurm launcher's job array on submitit's local cluster: the job unpickles CellJob in a new
    process and runs the script there; only the cell without results.json is submitted."""
    cells, _ = swept
    os.remove(sweep.finished(cells[5]))
    opts = sweep.parse_args(["--launcher", "slurm", "--cluster", "local", "--timeout-min", "5"])
    summary = sweep.sweep(cells, "slurm", out=str(tmp_path), opts=opts)
    assert ran(summary) == [cells[5]] and len(summary["skipped"]) == 7
    assert json.load(open(sweep.finished(cells[5])))["seed"] == cells[5].seed
    logs = [f for _, _, files in os.walk(tmp_path / "submitit") for f in files if f.endswith("_log.out")]
    assert len(logs) == 1  # one job, with submitit's own log


def test_cell_with_checkpoint_and_no_results_is_resumed(tmp_path):
    (cell,) = sweep.expand(dict(scripts=["dime_bc"], env_ids=["cheetah_run"], alphas=[0.45]), str(tmp_path))
    assert "--resume" not in sweep.cell_command(cell)
    run_dir = os.path.join(cell.directory, "cheetah_run__dime_bc__1__123")
    os.makedirs(run_dir)
    open(os.path.join(run_dir, "checkpoint.pt"), "w").close()
    command = sweep.cell_command(cell)
    assert command[-2:] == ["--resume", os.path.join(run_dir, "checkpoint.pt")]
    assert command[command.index("--output-dir") + 1] == cell.directory
    assert command[command.index("--alpha") + 1] == "0.45" and command[command.index("--seed") + 1] == "1"
    requeued = sweep.CellJob(4).checkpoint(cell)  # what submitit requeues on timeout or preemption
    assert isinstance(requeued.function, sweep.CellJob) and requeued.args == (cell,)
    open(os.path.join(run_dir, "results.json"), "w").close()  # finished: its command is the plain one
    assert "--resume" not in sweep.cell_command(cell)


def test_local_launcher_reruns_only_failed_and_deleted_cells(tmp_path, monkeypatch, capsys):
    """Stand-in commands (no torch import): seed 1 fails, seeds 2 and 3 write a results.json."""

    def fake_command(cell):
        if cell.seed == 1:
            return [sys.executable, "-c", "import sys; sys.exit(3)"]
        path = os.path.join(cell.directory, "run", "results.json")
        return [
            sys.executable,
            "-c",
            f"import os; os.makedirs({os.path.dirname(path)!r}, exist_ok=True); open({path!r}, 'w')",
        ]

    monkeypatch.setattr(sweep, "cell_command", fake_command)
    argv = ["--scripts", "dime_multi", "--env-ids", "cartpole_swingup", "--seeds", "1", "2", "3"]
    argv += ["--out", str(tmp_path), "--workers", "2"]
    assert sweep.main(argv) == 1
    out = capsys.readouterr().out
    assert "ran 2, skipped 0, failed 1" in out
    assert f"failed (exit 3): dime_multi cartpole_swingup seed=1; log: {tmp_path}" in out
    assert sweep.main(argv) == 1 and "ran 0, skipped 2, failed 1" in capsys.readouterr().out
    os.remove(tmp_path / "dime_multi" / "cartpole_swingup" / "seed_3" / "run" / "results.json")
    cells = sweep.expand(
        dict(scripts=["dime_multi"], env_ids=["cartpole_swingup"], seeds=[1, 2, 3]), tmp_path
    )
    summary = sweep.sweep(cells, "local", workers=2)
    assert ran(summary) == [cells[2]] and [o["cell"] for o in summary["failed"]] == [cells[0]]
    log = open(tmp_path / "dime_multi" / "cartpole_swingup" / "seed_1" / "sweep.log").read()
    assert log.count("$ ") == 3  # every attempt's command is appended


def test_run_logged_runs_once_and_returns_the_results(tmp_path):
    """sweep.run_logged (the own jobs of offline_table.py, finetune_curves.py): runs a printed command into
    its --output-dir, logs beside it, returns results.json; a finished directory is not run again, a failed
    run gives None."""
    script = tmp_path / "fake.py"
    script.write_text(
        "import json, os, sys\nprint('ran')\nos.makedirs(os.path.join(sys.argv[1], 'r'))\n"
        "json.dump({'final': {'mean': 1.5}}, open(os.path.join(sys.argv[1], 'r', 'results.json'), 'w'))\n"
    )
    directory = str(tmp_path / "out" / "job")
    assert sweep.run_logged(f"python {script} {directory}", directory) == {"final": {"mean": 1.5}}
    assert open(directory + ".log").read() == "ran\n"
    assert sweep.run_logged(f"python {script} {directory}", directory)["final"]["mean"] == 1.5  # not rerun
    assert open(directory + ".log").read() == "ran\n"
    failing = str(tmp_path / "out" / "failing")
    assert sweep.run_logged(f"python -c raise(SystemExit(3)) {failing}", failing) is None


def test_dime_multi_gets_no_alpha_and_entries_inherit_the_top_level(tmp_path):
    grid = dict(env_ids=["cheetah_run"], alphas=[0.3], seeds=[1], flags="--total-steps 5")
    grid["runs"] = [
        dict(script="dime_multi.py"),
        dict(name="bc", script="crr_ls", alphas=[1], flags=["--lr", 1e-3]),
    ]
    multi, bc = sweep.expand(grid, str(tmp_path))
    assert multi.alpha is None and multi.directory == str(tmp_path / "dime_multi" / "cheetah_run" / "seed_1")
    assert "--alpha" not in sweep.cell_command(multi)
    assert bc.directory == str(tmp_path / "bc" / "cheetah_run" / "alpha_1.0" / "seed_1")
    assert bc.flags == ("--total-steps", "5", "--lr", "0.001") and "bc" in sweep.cell_command(bc)


def test_offline_table_grid_matches_offline_table_py():
    """The grid holds the runs (method, task, seed, α or variant) and flags of the published table's
    offline_table.py command (docs/results.md)."""
    import offline_table

    grid = sweep.read_grid(os.path.join(ROOT, "benchmarks", "grids", "offline_table.yaml"))
    cells = sweep.expand(grid, "runs")
    preset = "--hidden-sizes 256 256 --batch-size 128 --num-samples 10"
    defaults = dict(tasks=["cartpole_swingup", "cheetah_run"], seeds=[1, 2], alphas=[0.1, 0.5, 0.9])
    opts = argparse.Namespace(**defaults, steps=10_000, episodes=10, preset=preset, out="runs")
    old = {}
    for job in offline_table.jobs(opts):
        flags = job["command"].split()[2:]
        flags = flags[: flags.index("--output-dir")]
        old[job["task"], job["seed"], job["alpha"], job["variant"]] = (job["method"], sorted(flags))
    new = {}
    for cell in cells:
        flags = sweep.cell_command(cell)[2:]
        del flags[flags.index("--output-dir") : flags.index("--exp-name") + 2]
        variant = cell.flags[cell.flags.index("--variant") + 1] if "--variant" in cell.flags else None
        method = "multi" if variant else cell.name
        new[cell.env_id, cell.seed, cell.alpha, variant] = (method, sorted(flags))
    assert len(cells) == 56 and new == old


def test_offline_table_of_a_grid_tabulates_finished_cells_and_checks_claims(tmp_path):
    """offline_table.py --grid: columns from the cells' scripts and α, mean ± 95 % interval over seeds, a best
    α only once every α of the grid has all seeds, claims on same-seed differences averaged over tasks."""
    import offline_table

    grid = dict(out=str(tmp_path / "cells"), env_ids=["a_run", "b_run"], seeds=[1, 2, 3], runs=[])
    grid["runs"] = [
        dict(name="paper_defaults", script="dime_bc", alphas=[1.0, 0.45, 0.9]),
        dict(name="ls", script="crr_ls", alphas=[0.3]),
    ]
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid))
    finals = {"bc": 100.0, "dime_bc": 150.0, "ls": 120.0}  # + 10·seed, + 40 on task b
    for cell in sweep.expand(grid, grid["out"]):
        method = "bc" if cell.alpha == 1.0 else "ls" if cell.script == "crr_ls" else "dime_bc"
        if cell.alpha == 0.9 and (cell.env_id, cell.seed) == ("b_run", 3):
            continue  # unfinished: no best α on task b
        value = finals[method] + 10 * cell.seed + 40 * (cell.env_id == "b_run") + 30 * (cell.alpha == 0.9)
        os.makedirs(os.path.join(cell.directory, "run"))
        result = {"final": {"alpha": cell.alpha, "mean": value}, "args": {}}
        with open(os.path.join(cell.directory, "run", "results.json"), "w") as f:
            json.dump(result, f)
    summary = offline_table.summarise_grid(str(path))
    assert summary["missing_cells"] == 1 and summary["seeds"] == [1, 2, 3]
    a, b = summary["table"]["a_run"], summary["table"]["b_run"]
    assert a["bc"] == [110.0, 120.0, 130.0] and b["ls"] == [170.0, 180.0, 190.0]
    assert a["dime_bc_best_alpha"] == 0.9 and a["dime_bc_best"] == [190.0, 200.0, 210.0]
    assert "dime_bc_best" not in b and "ls_best" in b  # LS has one α, finished on every seed
    mean, half = aggregate.mean_ci95(a["bc"])
    assert mean == 120.0 and half == pytest.approx(10.0 / math.sqrt(3) * 4.303)
    assert aggregate.mean_ci95([5.0]) == (5.0, None)  # one seed: no interval
    curves, halves = aggregate.mean_ci95([[0.0, 1.0], [2.0, 1.0]])  # [seeds, evaluations]: per evaluation
    assert curves.tolist() == [1.0, 1.0] and halves == pytest.approx([12.706, 0.0])
    claims = {c["claim"]: c for c in offline_table.check_claims(summary)}
    bc_ls = claims["BC < LS α=.3"]
    assert bc_ls["difference"] == pytest.approx(20.0) and bc_ls["interval"] == pytest.approx(0.0)
    assert bc_ls["holds"] and bc_ls["separated"] and bc_ls["seeds"] == 3
    assert "holds" not in claims["best α: LS < DiME (BC)"]  # task b has no best α yet
    assert claims["best α: LS < DiME (BC)"]["needs"] == "DiME (BC) best α (every α at every seed) on b_run"
    text = offline_table.claims_markdown(list(claims.values()))
    assert "| BC < LS α=.3 | +20.0 ± 0.0 | 3 | holds |" in text
    rows = offline_table.alpha_markdown(summary).splitlines()  # every α any cell ran; BC is DiME (BC) at 1
    assert rows[0] == "| task | method | α=0.3 | α=0.45 | α=0.9 | α=1 |"
    assert "| a_run | DiME (BC) | – | 170 ± 25 | 200 ± 25 | 120 ± 25 |" in rows
    assert "| b_run | DiME (BC) | – | 210 ± 25 | 235 ± 64 [2 seeds] | 160 ± 25 |" in rows
    assert "| b_run | LS | 180 ± 25 | – | – | – |" in rows


def test_finetune_curves_of_a_grid_checks_the_learned_alpha_claims(tmp_path):
    """finetune_curves.py --grid: the learned α's final return against the teacher and α = 1, and its env
    steps to the teacher's return against α = 0's (3× fewer needed), from the cells' results.json."""
    import finetune_curves

    grid = dict(out=str(tmp_path / "cells"), env_ids=["a_run"], seeds=[1, 2], runs=[])
    grid["runs"] = [
        dict(name="dime_learned", script="dime_finetune", alphas=[0.5], flags="--method dime --learn-alpha"),
        dict(name="dime", script="dime_finetune", alphas=[0.0, 1.0], flags="--method dime"),
    ]
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid))
    curves = {  # returns at env steps 0, 10k, 20k, 30k, 40k; the teacher returns 100
        "learned": [0, 60, 110, 120, 130],
        "0.0": [0, 10, 40, 80, 105],  # reaches the teacher at 40k env steps: twice the learned α's 20k
        "1.0": [0, 90, 95, 95, 95],
    }
    for cell in sweep.expand(grid, grid["out"]):
        label = "learned" if "--learn-alpha" in cell.flags else repr(cell.alpha)
        values = enumerate(curves[label])
        evaluations = [{"env_steps": 10_000 * i, "mean": v + cell.seed, "alpha": 0.5} for i, v in values]
        result = {"evaluations": evaluations, "final": evaluations[-1], "teacher": {"mean": 100.0}}
        result["args"] = {"method": "dime"}
        os.makedirs(os.path.join(cell.directory, "run"))
        with open(os.path.join(cell.directory, "run", "results.json"), "w") as f:
            json.dump(result, f)
    runs = finetune_curves.grid_runs(str(path))
    assert set(runs) == {("a_run", "dime", "learned"), ("a_run", "dime", "0"), ("a_run", "dime", "1")}
    (claim,) = finetune_curves.grid_claims(runs)
    assert claim["learned_final"] == 131.5 and claim["ends_above_teacher"] and claim["ends_above_alpha_1"]
    assert claim["steps_learned"] == 20_000 and claim["steps_alpha_0"] == 40_000
    assert not claim["three_times_faster"]  # 2× only
    assert claim["seeds_above_teacher"] == 2 and claim["alpha_0_final"] == 106.5
    assert claim["steps_learned_to_alpha_0_final"] == 20_000 and claim["steps_alpha_0_to_its_final"] == 40_000
    row = "| a_run | dime | 2 | 100.0 | 131.5 ± 6.4 | 2 of 2 | 96.5 | 20.0k / 40.0k "
    row += "| 106.5: 20.0k / 40.0k (2.0×) | holds | holds | does not hold |"
    assert row in finetune_curves.claims_markdown([claim])


@pytest.mark.parametrize(
    "text, message",
    [
        ("scripts: [nope]\nenv_ids: [cheetah_run]", "unknown script 'nope'"),
        ("scripts: [dime_bc]\nenv_ids: [cheetah_run]\nalpha: [0.3]", "unknown key 'alpha'"),
        (
            "runs:\n  - script: dime_bc\n    env_ids: [a]\n    alphas: [0.3]\n    seed: 1",
            "unknown key 'seed'",
        ),
        ("scripts: [dime_bc]\nenv_ids: [cheetah_run]", "dime_bc needs --alpha"),
        ("scripts: [dime_multi]\nenv_ids: [cheetah_run]\nflags: --seed 3", "--seed is set by the sweep"),
        ("scripts: [dime_multi]\nenv_ids: [cheetah_run]\nseeds: [one]", "seeds must be int values"),
        ("scripts: [dime_multi]", "no env_ids"),
        ("scripts: [dime_multi\n", "cannot parse"),
    ],
)
def test_bad_grid_is_one_line_and_exit_code_2(text, message, tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    assert sweep.main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_missing_grid_file_exits_2_without_traceback(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "sweep.py"), str(tmp_path / "missing.yaml")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: cannot read the grid file") and done.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------- aggregate
def write_results(root, method, algo, env_id, seed, alpha, final, exp_name=None, **extra) -> None:
    """A hand-made results.json in <root>/<method>/<env>/<alpha>/seed_<seed>/run/."""
    run = root / method / env_id / str(alpha) / f"seed_{seed}" / "run"
    run.mkdir(parents=True)
    means = [f["mean"] for f in final] if isinstance(final, list) else [final["mean"]]
    evaluations = [{"step": 0, "alpha": alpha, "mean": 0.0}, {"step": 10, "alpha": alpha, "mean": means[0]}]
    results = dict(algo=algo, env_id=env_id, seed=seed, alpha=alpha, evaluations=evaluations, final=final)
    results["args"] = {"exp_name": exp_name or algo}
    (run / "results.json").write_text(json.dumps({**results, **extra}))


def se(values) -> float:
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


@pytest.fixture
def fixture_dir(tmp_path):
    """ls on two tasks at α 0.3/0.7 (B at 0.3 has one seed), dime_multi bc on task A, a crr_ls 'bc' run."""
    root = tmp_path / "runs"
    for seed, value in zip((1, 2, 3), (10.0, 20.0, 30.0)):
        write_results(root, "ls", "crr_ls", "A", seed, 0.3, {"alpha": 0.3, "mean": value}, "ls")
    for seed, value in zip((1, 2), (40.0, 44.0)):
        write_results(root, "ls", "crr_ls", "A", seed, 0.7, {"alpha": 0.7, "mean": value}, "ls")
    write_results(root, "ls", "crr_ls", "B", 1, 0.3, {"alpha": 0.3, "mean": 5.0}, "ls")
    for seed, value in zip((1, 2), (1.0, 3.0)):
        write_results(root, "ls", "crr_ls", "B", seed, 0.7, {"alpha": 0.7, "mean": value}, "ls")
    for seed, (low, high) in zip((1, 2), ((12.0, 8.0), (14.0, 9.0))):
        final = [{"alpha": 0.3, "mean": low, "std": 1.0}, {"alpha": 0.7, "mean": high, "std": 1.0}]
        write_results(root, "multi", "dime_multi", "A", seed, None, final, variant="bc")
    write_results(root, "bc", "crr_ls", "A", 1, 1.0, {"alpha": 1.0, "mean": 7.0}, "bc")
    write_results(root, "morl", "dime_morl", "A", 1, 0.5, {"alpha": 0.5, "mean": [1.0, -2.0]})
    return root


def test_aggregate_matches_hand_computed_means(fixture_dir, tmp_path):
    out = tmp_path / "agg"
    assert aggregate.main([str(fixture_dir), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "table.csv")))
    got = {(r["table"], r["method"], r["env_id"], r["alpha"]): r for r in rows}

    def check(key, mean, stderr, seeds=""):
        row = got[key]
        assert float(row["mean"]) == pytest.approx(mean)
        assert (row["se"] == "") if stderr is None else float(row["se"]) == pytest.approx(stderr)
        assert row["seeds"] == str(seeds)

    check(("alpha", "ls", "A", "0.3"), 20.0, se([10, 20, 30]), 3)  # 5.7735
    check(("alpha", "ls", "A", "0.7"), 42.0, 2.0, 2)
    check(("alpha", "ls", "B", "0.3"), 5.0, None, 1)
    check(("alpha", "ls", "B", "0.7"), 2.0, 1.0, 2)
    check(("alpha", "ls", "mean", "0.3"), (20 + 5) / 2, None)  # B has one seed: no se
    check(("alpha", "ls", "mean", "0.7"), (42 + 2) / 2, math.sqrt(2.0**2 + 1.0**2) / 2)
    check(("alpha", "dime_multi-bc", "A", "0.3"), 13.0, 1.0, 2)
    check(("alpha", "dime_multi-bc", "A", "0.7"), 8.5, 0.5, 2)
    check(("alpha", "bc", "A", "1"), 7.0, None, 1)
    check(("best", "ls", "A", "0.7"), 42.0, 2.0, 2)
    check(("best", "ls", "B", "0.3"), 5.0, None, 1)
    check(("best", "ls", "mean", ""), (42 + 5) / 2, None)
    check(("best", "dime_multi-bc", "A", "0.3"), 13.0, 1.0, 2)
    assert ("alpha", "dime_multi-bc", "mean", "0.3") not in got  # no task B: no mean over tasks
    assert not any(r["method"].startswith("dime_morl") for r in rows)  # per-objective returns are left out
    table = (out / "table.md").read_text()
    assert "| ls | 0.3 | 20.0 ± 24.8 (3) | 5.0 (1) | 12.5 |" in table  # t(2) = 4.303 × se 5.7735
    assert "| ls | 42.0 ± 25.4 (2), α=0.7 | 5.0 (1), α=0.3 | 23.5 |" in table  # t(1) = 12.706 × se 2.0
    for name in ("alpha.png", "curves.png"):
        assert (out / name).stat().st_size > 1000


def test_aggregate_of_an_empty_directory_exits_2(tmp_path, capsys):
    assert aggregate.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no results.json under")
