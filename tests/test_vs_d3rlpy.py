"""benchmarks/vs_d3rlpy.py without d3rlpy: --quality --summary (the table of finished cells, the best-α rows,
no training), and the speed run's plan, peaks, floors and rows with the measurements faked."""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "vs_d3rlpy.py")


def write_cell(out, tag: str, learner: str, seed: int, final: float) -> None:
    """A finished quality cell whose results.json holds only its final return."""
    run = out / tag / learner / f"seed_{seed}" / "run"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"final": {"mean": final}}))


def test_summary_tabulates_every_dataset_and_picks_the_best_alpha_once_all_are_finished(tmp_path):
    finals = {"d3rlpy_crr": 100.0, "dime_bc": 150.0, "dime_bc_a0.1": 90.0, "dime_bc_a0.5": 140.0}
    finals["dime_bc_a0.9"] = 170.0
    for seed in (1, 2):
        for learner, final in finals.items():
            write_cell(tmp_path, "cheetah_run", learner, seed, final + seed)
        # no other α there
        write_cell(tmp_path, "cheetah_run_random0.5", "dime_bc", seed, 50.0 + seed)
    # one seed: no best-α row for AWBC
    write_cell(tmp_path, "cheetah_run", "dime_awbc", 1, 120.0)
    command = [sys.executable, "benchmarks/vs_d3rlpy.py", "--quality", "--summary", "--seeds", "1", "2"]
    done = subprocess.run([*command, "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = json.loads((tmp_path / "table.json").read_text())["final_returns"]
    assert set(table) == {"cheetah_run", "cheetah_run_random0.5"}
    # α = 0.9 is the best
    assert table["cheetah_run"]["dime_bc best α"] == [171.0, 172.0]
    # its other α have not run
    assert table["cheetah_run_random0.5"]["dime_bc best α"] == []
    assert table["cheetah_run"]["dime_awbc best α"] == [] and table["cheetah_run"]["dime_awbc"] == [120.0]
    text = (tmp_path / "table.md").read_text()
    assert "| dime_bc best α | 171.5 ± 6.4 (171.0, 172.0, α = 0.9) | – |" in text
    # learners without a finished cell are left out
    assert "ls_ml" not in text


def test_summary_of_a_missing_folder_is_one_line_and_exit_1(tmp_path):
    command = [sys.executable, "benchmarks/vs_d3rlpy.py", "--quality", "--summary", "--out", str(tmp_path)]
    command[-1] += "/none"
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0
    assert "holds no quality cells" in done.stderr


def load_benchmark(path: str = SCRIPT):
    """benchmarks/vs_d3rlpy.py as a module (its imports resolve against benchmarks/)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    spec = importlib.util.spec_from_file_location("vs_d3rlpy_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_native_bf16(monkeypatch):
    """A CPU without native bfloat16 matmuls (AVX2), as the scripts' check_device sees it."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


def test_a_run_needs_only_the_peaks_of_the_precisions_it_trains_in():
    bench = load_benchmark()
    modes = ["fp32", "bf16", "compile-bf16", "bf16-nonnative"]
    without = bench.speed_plan(["crr_ls"], modes, native=False, d3rlpy_python="python")
    assert bench.needed_peaks(without) == ["float32"]
    with_native = bench.speed_plan(["crr_ls"], modes, native=True, d3rlpy_python="python")
    assert bench.needed_peaks(with_native) == ["float32", "bfloat16"]
    dtypes = {config.name: config.dtype for config in with_native}
    assert dtypes["crr_ls compile-bf16"] == "bfloat16" and dtypes["crr_ls bf16-nonnative"] == "float32"
    fp32_only = bench.speed_plan(["crr_ls"], ["fp32"], native=True, d3rlpy_python="python")
    assert bench.needed_peaks(fp32_only) == ["float32"]


def test_the_plan_times_d3rlpy_at_its_default_n_and_at_ours():
    bench = load_benchmark()
    plan = bench.speed_plan(["dime_bc"], ["fp32"], native=False, d3rlpy_python="d3rlpy-python")
    d3rlpy = [config for config in plan if config.python == "d3rlpy-python"]
    assert [(c.worker, c.samples) for c in d3rlpy] == [(("d3rlpy", "4"), 4), (("d3rlpy", "20"), 20)]
    assert bench.round_order(plan, 1) == plan[::-1]


def test_the_peak_takes_a_time_budget_not_a_fixed_count():
    bench = load_benchmark()
    start = time.perf_counter()
    gflops = bench.peak_worker("float32", size=64, budget_s=0.05)
    assert gflops > 0 and time.perf_counter() - start < 1.0


def fake_measure(calls: list):
    """`measure` without processes: 100 GFLOP/s fp32, 400 bf16; d3rlpy 17 ms at N = 4 and 25 ms at N = 20;
    our steps 32 ms and 2 GFLOP each."""

    def measure(python, worker, opts, threads):
        calls.append(list(worker))
        if worker[0] == "peak":
            return {"gflops": 100.0 if worker[1] == "float32" else 400.0}
        if worker[0] == "d3rlpy":
            seconds = 0.017 if worker[1:] in ([], ["4"]) else 0.025
            return {"seconds_per_step": seconds, "flops_per_step": 4e8}
        return {"seconds_per_step": 0.032, "flops_per_step": 2e9}

    return measure


def test_speed_floors_bf16_at_the_fp32_peak_without_native_bf16_and_prints_the_machine_in_every_row(
    tmp_path, monkeypatch, capsys, no_native_bf16
):
    """Fails on the speed run before the fix: it measured the bfloat16 peak though no row trains in it, and
    floored --bf16 at that peak on a CPU where the scripts train in fp32."""
    bench = load_benchmark()
    calls = []
    monkeypatch.setattr(bench, "measure", fake_measure(calls))
    monkeypatch.setattr(bench, "cpu_model", lambda: "Test EPYC (family 25, model 1)", raising=False)
    out = tmp_path / "speed.json"
    argv = ["vs_d3rlpy.py", "--scripts", "crr_ls", "dime_morl", "--modes", "fp32", "bf16", "--rounds", "2"]
    argv += ["--d3rlpy-python", sys.executable, "--dataset", "unused.hdf5", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    assert ["peak", "bfloat16"] not in calls
    assert calls.count(["peak", "float32"]) == 2
    rows = {row["learner"]: row for row in json.loads(out.read_text())["rows"]}
    for name in ("crr_ls fp32", "crr_ls bf16", "dime_morl fp32", "dime_morl bf16"):
        assert rows[name]["floor_ms"] == pytest.approx(20.0)
        assert rows[name]["precision"] == "float32"
    assert rows["crr_ls bf16"]["ratio"] == pytest.approx(17 / 32)
    assert rows["crr_ls bf16"]["ratio_n20"] == pytest.approx(25 / 32)
    lines = capsys.readouterr().out.splitlines()
    printed = [line for line in lines if line.startswith(("crr_ls", "dime_morl", "d3rlpy"))]
    assert len(printed) == 6
    for line in printed:
        assert line.endswith("Test EPYC (family 25, model 1)")
        assert " no " in line and " 100 " in line


def test_the_online_learners_report_matmul_flops_for_their_floor(monkeypatch, no_native_bf16):
    bench = load_benchmark()
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import speed

    monkeypatch.setitem(speed.PRESETS, "cpu", ((32, 32), 16))
    monkeypatch.setattr(bench, "HIDDEN", (32, 32))
    for script in ("dime_morl", "dime_finetune"):
        out = bench.ours_worker(script, None, steps=1, warmup=0, bf16=True, compile=False)
        assert out["flops_per_step"] > 0
        assert out["precision"] == "float32"
