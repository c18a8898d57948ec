"""benchmarks/gpu_check.py: its CPU dry run passes every row of the table, it ends at once in one line where
there is no CUDA device, and a resume that does not continue exactly fails its row."""

import math
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_check  # noqa: E402

# Rows that may be skipped: bfloat16, on a CPU without native bfloat16 matmuls.
MAY_SKIP = {gpu_check.LABELS["bf16"], gpu_check.LABELS["speed_bf16"]}


def table(out: str) -> dict:
    """The printed table's rows by (check, script): {"result": ..., "detail": ...}."""
    rows = {}
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] not in ("check", "---"):
            rows[cells[0], cells[1]] = {"result": cells[2], "detail": cells[3]}
    return rows


def test_the_dry_run_passes_every_row(tmp_path, capsys):
    """`--device cpu`: the header, then a row per check and script, none failed; skipped rows only where
    the CPU has no native bfloat16 or d3rlpy is not installed; the resume rows bit for bit."""
    code = gpu_check.main(["--device", "cpu", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    rows = table(out)
    failed = {key: row["detail"] for key, row in rows.items() if row["result"] == "fail"}
    assert code == 0 and not failed, failed
    assert out.startswith("- device: CPU") and "- torch " in out and "CUDA" in out and "cuDNN" in out
    for script in gpu_check.SCRIPTS:
        for label in gpu_check.LABELS.values():
            row = rows[label, script]
            assert row["result"] in (("pass", "skip") if label in MAY_SKIP else ("pass",)), (label, script)
        assert "bit for bit" in rows[gpu_check.LABELS["resume"], script]["detail"]
    assert rows[gpu_check.LABELS["speed"], gpu_check.D3RLPY]["result"] in ("pass", "skip")
    assert len(rows) == len(gpu_check.SCRIPTS) * len(gpu_check.LABELS) + 1
    assert "**every row passes**" in out


def test_without_cuda_it_prints_one_line_and_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out == "no CUDA device: nothing to check\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_the_command_without_cuda_ends_at_once():
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "no CUDA device: nothing to check\n"


def test_a_resume_that_does_not_continue_exactly_fails_its_row(tmp_path, capsys, monkeypatch):
    """A checkpoint that loads slightly off (every float in it 1e-6 larger): the resumed run still ends,
    but its results differ from the uninterrupted run's, so the row fails and the exit status is 1."""
    load = torch.load

    def off_by_a_little(*args, **kwargs):
        return nudged(load(*args, **kwargs))

    monkeypatch.setattr(torch, "load", off_by_a_little)
    argv = ["--device", "cpu", "--scripts", "crr_ls", "--checks", "resume", "--out", str(tmp_path)]
    assert gpu_check.main(argv) == 1
    rows = table(capsys.readouterr().out)
    row = rows[gpu_check.LABELS["resume"], "crr_ls"]
    assert row["result"] == "fail" and "differs from the uninterrupted run" in row["detail"], row
    assert rows[gpu_check.LABELS["run"], "crr_ls"]["result"] == "pass"


def nudged(value):
    """`value` with every floating-point tensor in it (nested in dicts and lists) 1e-6 larger."""
    if isinstance(value, dict):
        return {k: nudged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nudged(v) for v in value]
    if torch.is_tensor(value) and value.is_floating_point():
        return value + 1e-6
    return value


def test_the_resume_verdict():
    """Equal results pass bit for bit; timing and the run's paths are ignored; a difference within the GPU
    tolerance passes there and fails on the CPU; a larger one, a missing key or a different string fail."""
    reference = {
        "evaluations": [{"step": 0, "mean": 10.0, "returns": [9.0, 11.0]}],
        "final": {"mean": 10.0},
        "wall_time_s": 3.0,
        "args": {"output_dir": "runs/a", "resume": None, "seed": 1},
    }
    resumed = {**reference, "wall_time_s": 5.0, "args": {"output_dir": "runs/b", "resume": "x", "seed": 1}}
    passed, detail = gpu_check.resume_verdict(reference, resumed, 0.0)
    assert passed and detail == "equal to the uninterrupted run, bit for bit"
    close = {**reference, "final": {"mean": 10.0 + 1e-5}}
    passed, detail = gpu_check.resume_verdict(reference, close, gpu_check.GPU_RTOL)
    assert passed and "not bit for bit" in detail and "results.final.mean" in detail
    passed, detail = gpu_check.resume_verdict(reference, close, 0.0)
    assert not passed and "results.final.mean" in detail
    far = {**reference, "evaluations": [{"step": 0, "mean": 10.0, "returns": [9.0, 12.0]}]}
    passed, detail = gpu_check.resume_verdict(reference, far, gpu_check.GPU_RTOL)
    assert not passed and "results.evaluations[0].returns[1]" in detail
    shorter = {**reference, "evaluations": []}
    assert not gpu_check.resume_verdict(reference, shorter, gpu_check.GPU_RTOL)[0]
    renamed = {**reference, "args": {**reference["args"], "seed": "1"}}
    assert not gpu_check.resume_verdict(reference, renamed, gpu_check.GPU_RTOL)[0]
    assert gpu_check.leaf_difference(math.nan, math.nan) == 0.0
    assert gpu_check.leaf_difference(1.0, math.inf) == math.inf
