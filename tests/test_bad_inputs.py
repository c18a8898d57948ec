"""Bad input to every script, each run as its own process: a non-zero exit, exactly one line on stderr that
starts with "error:" and names the problem and the fix (no traceback), and no file that existed before the
run changed, nor any new one (sha256 of everything the run was given and of its output dir, before/after).

The matrix is `CASES` × `SCRIPTS`; a case lists only the scripts it applies to: the data-source cases need
`--dataset`, which only the offline scripts take; dime_finetune meets the file cases through `--teacher`;
dime_morl reads no file but a checkpoint, so its file cases use `--resume`. The selected cells run in one
module fixture, two processes at a time, forked by `script_runner` (conftest.py) to skip the imports; the
`FRESH_INTERPRETER` row runs as plain `python script.py`, where import-time noise on stderr would show.
"""

import dataclasses
import glob
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest
import torch

from common.datasets import masked_crc32c

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV_ID, OBS_DIM, ACT_DIM = "cartpole_swingup", 5, 1
OFFLINE = ("dime_bc", "dime_awbc", "crr_ls", "dime_multi")
SCRIPTS = (*OFFLINE, "dime_finetune", "dime_morl")
TINY = ["--hidden-sizes", "8", "--batch-size", "4", "--num-samples", "2", "--eval-episodes", "1"]
TRADEOFF = {"dime_multi": ["--eval-alphas", "0.5"]}  # the other offline scripts take a fixed --alpha
BAD_TRADEOFF = {
    "dime_bc": ["--alpha", "1.5"],
    "dime_awbc": ["--alpha", "-0.1"],
    "crr_ls": ["--alpha", "0"],  # CRR-LS needs α > 0
    "dime_multi": ["--eval-alphas", "0.5", "1.5"],
    "dime_finetune": ["--alpha", "1.5"],
    "dime_morl": ["--alpha", "1.5"],  # bandits (and --method ls) take α in [0, 1]
}
FOREIGN = dict(zip(SCRIPTS, SCRIPTS[1:] + SCRIPTS[:1]))  # whose checkpoint each script is handed
OTHER_ENV = {"dime_morl": "cartpole_swingup"}  # its checkpoint is on schaffer; not the default env
DEFAULT_ENV = {"dime_bc": "cheetah_run", "dime_awbc": "cheetah_run", "crr_ls": "cheetah_run"}
DEFAULT_ENV.update(dime_multi="cheetah_run", dime_morl="fonseca_fleming")  # --env-id defaults unlike ENV_ID
TIMEOUT_S = 300


# ---------------------------------------------------------------------------------------------- inputs
def write_hdf5(path, rows: int = 300, obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM, drop=(), **edits):
    """A D4RL-style file for cartpole_swingup (3 episodes of random transitions); `edits` replace columns
    (a callable gets the column and returns the new one), `drop` leaves keys out."""
    rng = np.random.default_rng(0)
    timeouts = np.zeros(rows, bool)
    timeouts[99::100] = True
    columns = dict(
        observations=rng.normal(size=(rows, obs_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, (rows, act_dim)).astype(np.float32),
        rewards=rng.uniform(0, 1, rows).astype(np.float32),
        terminals=np.zeros(rows, bool),
        timeouts=timeouts,
    )
    with h5py.File(path, "w") as h5:
        for key, value in columns.items():
            if key not in drop:
                h5[key] = edits[key](value) if key in edits else value


def with_value(value: float, row: int = 7, col=None) -> Callable[[np.ndarray], np.ndarray]:
    """An `edits` entry for write_hdf5: the column with `value` at [row] or [row, col]."""

    def edit(column: np.ndarray) -> np.ndarray:
        column = column.copy()
        column[(row,) if col is None else (row, col)] = value
        return column

    return edit


def write_corrupt_tfrecord(directory) -> None:
    """An RL Unplugged shard whose one record fails its CRC (a payload byte flipped after framing)."""
    os.makedirs(directory)
    record = b"\x0a\x00" * 40
    length = struct.pack("<Q", len(record))
    framed = (
        length + struct.pack("<I", masked_crc32c(length)) + record + struct.pack("<I", masked_crc32c(record))
    )
    framed = framed[:20] + bytes([framed[20] ^ 0xFF]) + framed[21:]
    with gzip.open(os.path.join(directory, "train-00000-of-00001"), "wb") as f:
        f.write(framed)


def truncate(path, keep: float = 1 / 3) -> None:
    """Keep the first third of a file, as an interrupted download or copy would."""
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])


def tiny_run_flags(script: str, output_dir: str, dataset: str) -> list[str]:
    """A few learner steps that leave a real checkpoint.pt (dime_morl: on the schaffer bandit)."""
    flags = [*TINY, "--env-id", ENV_ID, "--output-dir", output_dir, "--checkpoint-every", "1"]
    if script in OFFLINE:
        tradeoff = TRADEOFF.get(script, ["--alpha", "0.5"])
        return [*flags, "--dataset", dataset, *tradeoff, "--total-steps", "2", "--eval-every", "100"]
    if script == "dime_finetune":
        online = (
            "--num-envs 1 --total-env-steps 1000 --learning-starts 900 --replay-ratio 0.02 --buffer-size 2000"
        )
        return [*flags, *online.split()]
    return [*flags, "--env-id", "schaffer", "--total-steps", "3"]


def export_policy(path, obs_dim: int, act_dim: int) -> None:
    """A teacher file in dime_finetune's format (torch.export of its Policy) with other sizes."""
    import dime_finetune

    policy = dime_finetune.Policy(obs_dim, act_dim, (8,)).eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(policy, (torch.zeros(2, obs_dim),), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)


@dataclasses.dataclass
class Shared:
    dataset: str  # a good cartpole_swingup dataset
    runs: dict  # script -> run directory holding its checkpoint.pt
    teacher_wrong_actions: str  # a 5-dim-observation policy with 2 actions


def checkpoints_needed(case: str, script: str) -> set:
    """The scripts whose checkpoint a cell resumes (or truncates)."""
    if case == "foreign_checkpoint":
        return {FOREIGN[script]}
    if case.startswith("checkpoint_of_") or (case, script) == ("truncated", "dime_morl"):
        return {script}
    return set()


def build_shared(root: str, cells: list, runner) -> Shared:
    """The good dataset, a real checkpoint of every script the cells need (run as processes), a teacher
    with the wrong number of actions."""
    dataset = os.path.join(root, "good.hdf5")
    write_hdf5(dataset)
    needed = sorted(set().union(*(checkpoints_needed(case, script) for case, script in cells)))
    jobs = []
    for script in needed:
        os.makedirs(os.path.join(root, "logs", script))
        jobs.append(
            (script, tiny_run_flags(script, os.path.join(root, script), dataset), f"{root}/logs/{script}")
        )
    for script, (returncode, stderr) in zip(needed, runner.run_many(jobs)):
        assert returncode == 0, f"{script}: {stderr}"
    runs = {script: glob.glob(os.path.join(root, script, "*"))[0] for script in needed}
    teacher = os.path.join(root, "two_actions.pt2")
    export_policy(teacher, OBS_DIM, 2)
    return Shared(dataset, runs, teacher)


# ----------------------------------------------------------------------------------------------- cases
def base_flags(script: str, case_dir: str, shared: Shared, dataset: str | None = None) -> list[str]:
    """Flags of a valid tiny run (offline: on a copy of the good dataset unless `dataset` is given); every
    case adds or replaces the one bad input."""
    if script in OFFLINE:
        if dataset is None:
            dataset = os.path.join(case_dir, "good.hdf5")
            shutil.copy(shared.dataset, dataset)
        return ["--env-id", ENV_ID, "--dataset", dataset, *TRADEOFF.get(script, ["--alpha", "0.5"]), *TINY]
    if script == "dime_finetune":
        return ["--env-id", ENV_ID, "--num-envs", "1", *TINY]
    return ["--env-id", "schaffer", *TINY]


def file_input(script: str, case_dir: str, shared: Shared, make: Callable[[str], None], name: str = ""):
    """The flag that takes a file, given `make`'s file: --dataset (offline), --teacher (dime_finetune),
    --resume (dime_morl, which reads no other file)."""
    name = name or {"dime_finetune": "input.pt2", "dime_morl": "input.pt"}.get(script, "input.hdf5")
    path = os.path.join(case_dir, name)
    make(path)
    if script in OFFLINE:
        return base_flags(script, case_dir, shared, dataset=path)
    flag = "--teacher" if script == "dime_finetune" else "--resume"
    return [*base_flags(script, case_dir, shared), flag, path]


def missing(script, case_dir, shared):
    words = ["FileNotFoundError"] if script == "dime_morl" else ["not found"]
    return file_input(script, case_dir, shared, lambda p: None), ["input", *words]


def directory(script, case_dir, shared):
    """A directory where a file is expected, named like that file."""
    words = ["IsADirectoryError"] if script == "dime_morl" else ["is a directory", "pass"]
    return file_input(script, case_dir, shared, os.makedirs), ["input", *words]


def truncated(script, case_dir, shared):
    """The first third of a good file: HDF5 dataset, exported teacher, or checkpoint."""
    source = {"dime_finetune": os.path.join(ROOT, "zoo", ENV_ID, "middle.pt2")}
    source["dime_morl"] = os.path.join(shared.runs["dime_morl"], "checkpoint.pt")
    source = source.get(script, shared.dataset)

    def make(path):
        shutil.copy(source, path)
        truncate(path)

    words = {"dime_finetune": "not a readable exported policy", "dime_morl": "not a readable checkpoint"}
    return file_input(script, case_dir, shared, make), ["input", words.get(script, "truncated")]


def missing_key(script, case_dir, shared):
    flags = file_input(script, case_dir, shared, lambda p: write_hdf5(p, drop=("rewards",)))
    return flags, ["'rewards'", "needs"]


def wrong_obs_dim(script, case_dir, shared):
    """Offline: a 6-dim-observation dataset; dime_finetune: a teacher of cheetah_run (17-dim)."""
    if script == "dime_finetune":
        make = lambda p: shutil.copy(os.path.join(ROOT, "zoo", "cheetah_run", "late.pt2"), p)  # noqa: E731
        return file_input(script, case_dir, shared, make), ["cannot act", f"exported for {ENV_ID}"]
    make = lambda p: write_hdf5(p, obs_dim=OBS_DIM + 1)  # noqa: E731
    return file_input(script, case_dir, shared, make), ["(6, 1)", "(5, 1)", f"recorded on {ENV_ID}"]


def wrong_action_dim(script, case_dir, shared):
    """Offline: a 2-dim-action dataset; dime_finetune: a teacher with 2 actions for cartpole's 5 dims."""
    if script == "dime_finetune":
        make = lambda p: shutil.copy(shared.teacher_wrong_actions, p)  # noqa: E731
        return file_input(script, case_dir, shared, make), ["(2,) actions", "takes 1"]
    make = lambda p: write_hdf5(p, act_dim=ACT_DIM + 1)  # noqa: E731
    return file_input(script, case_dir, shared, make), ["(5, 2)", "(5, 1)", f"recorded on {ENV_ID}"]


def nan_observation(script, case_dir, shared):
    """A NaN in the observation of row 7, which is also s' of row 6."""
    make = lambda p: write_hdf5(p, observations=with_value(np.nan, col=2))  # noqa: E731
    return file_input(script, case_dir, shared, make), ["NaN/inf", "first at row 6", "drop"]


def inf_reward(script, case_dir, shared):
    make = lambda p: write_hdf5(p, rewards=with_value(np.inf, row=42))  # noqa: E731
    return file_input(script, case_dir, shared, make), ["NaN/inf", "row 42", "drop"]


def empty(script, case_dir, shared):
    make = lambda p: write_hdf5(p, rows=0)  # noqa: E731
    return file_input(script, case_dir, shared, make), ["no transitions", "non-empty"]


def bad_crc_tfrecord(script, case_dir, shared):
    """An RL Unplugged task directory whose shard fails its CRC check."""
    flags = file_input(script, case_dir, shared, write_corrupt_tfrecord, name="cartpole_swingup")
    return flags, ["train-00000-of-00001", "CRC", "re-download"]


def unknown_env(script, case_dir, shared):
    flags = base_flags(script, case_dir, shared)
    flags[flags.index("--env-id") + 1] = "cheetah_fly"
    return flags, ["--env-id", "cheetah_fly", "cheetah_run"]


def tradeoff_out_of_range(script, case_dir, shared):
    flags = base_flags(script, case_dir, shared)
    bad = BAD_TRADEOFF[script]
    if script in OFFLINE:  # replace the good trade-off flag
        flags = [f for f in flags if f not in ("--alpha", "--eval-alphas", "0.5")]
    return [*flags, *bad], [bad[0], bad[-1], "range"]


def copy_run(script: str, case_dir: str, shared: Shared) -> str:
    target = os.path.join(case_dir, f"{script}_run")
    shutil.copytree(shared.runs[script], target)
    return os.path.join(target, "checkpoint.pt")


def foreign_checkpoint(script, case_dir, shared):
    """A real checkpoint of another script."""
    return ["--resume", copy_run(FOREIGN[script], case_dir, shared)], ["--resume", "not written by"]


def checkpoint_of_another_env(script, case_dir, shared):
    """The script's own checkpoint, resumed with another --env-id."""
    other = OTHER_ENV.get(script, "walker_walk")
    flags = ["--resume", copy_run(script, case_dir, shared), "--env-id", other]
    return flags, ["--env-id", other, "drop --env-id"]


def checkpoint_of_another_env_typed_at_its_default(script, case_dir, shared):
    """The script's own checkpoint, resumed with --env-id typed at its default (not the checkpoint's env)."""
    flags = ["--resume", copy_run(script, case_dir, shared), "--env-id", DEFAULT_ENV[script]]
    return flags, ["--env-id", DEFAULT_ENV[script], "drop --env-id"]


def unwritable_output_dir(script, case_dir, shared):
    """--output-dir below a regular file: the run directory cannot be made."""
    blocker = os.path.join(case_dir, "not_a_dir")
    open(blocker, "w").write("a file, not a directory\n")
    flags = [*base_flags(script, case_dir, shared), "--output-dir", os.path.join(blocker, "runs")]
    return flags, ["not_a_dir", "--output-dir"]


FILE_CASES = ("missing", "directory", "truncated")
# The row that gets the furthest into a run (env, dataset or teacher, networks) starts new interpreters.
FRESH_INTERPRETER = {"unwritable_output_dir"}
CASES = {
    "missing": (missing, SCRIPTS),
    "directory": (directory, SCRIPTS),
    "truncated": (truncated, SCRIPTS),
    "missing_key": (missing_key, OFFLINE),
    "wrong_obs_dim": (wrong_obs_dim, (*OFFLINE, "dime_finetune")),
    "wrong_action_dim": (wrong_action_dim, (*OFFLINE, "dime_finetune")),
    "nan_observation": (nan_observation, OFFLINE),
    "inf_reward": (inf_reward, OFFLINE),
    "empty": (empty, OFFLINE),
    "bad_crc_tfrecord": (bad_crc_tfrecord, OFFLINE),
    "unknown_env": (unknown_env, SCRIPTS),
    "tradeoff_out_of_range": (tradeoff_out_of_range, SCRIPTS),
    "foreign_checkpoint": (foreign_checkpoint, SCRIPTS),
    "checkpoint_of_another_env": (checkpoint_of_another_env, SCRIPTS),
    "checkpoint_of_another_env_typed_at_its_default": (
        checkpoint_of_another_env_typed_at_its_default,
        tuple(DEFAULT_ENV),
    ),
    "unwritable_output_dir": (unwritable_output_dir, SCRIPTS),
}
MATRIX = [(case, script) for case, (_, scripts) in CASES.items() for script in scripts]


# ------------------------------------------------------------------------------------------- execution
def snapshot(root) -> dict:
    """Every path under root: sha256 for files, None for directories."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(directory, name), root)] = None
        for name in files:
            path = os.path.join(directory, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


@dataclasses.dataclass
class Outcome:
    flags: list
    words: list
    returncode: int
    stderr: str
    before: dict
    after: dict


def output_flags(case_dir: str, flags: list) -> list:
    """Every run writes below its case directory (a resumed run writes to its checkpoint's directory)."""
    return flags if "--resume" in flags else ["--output-dir", os.path.join(case_dir, "out"), *flags]


def run_fresh(script: str, flags: list, case_dir: str) -> tuple[int, str]:
    """`python script.py ...` in a new interpreter: import-time noise on stderr shows up here."""
    env = {**os.environ, "MUJOCO_GL": "disable", "OMP_NUM_THREADS": "1", "DIME_DATA": cache_dir(case_dir)}
    command = [sys.executable, f"{script}.py", *output_flags(case_dir, flags)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    return proc.returncode, proc.stderr


def cache_dir(case_dir: str) -> str:
    return os.path.join(case_dir, "cache")  # DIME_DATA: where a converted dataset would land


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory, script_runner) -> dict:
    """Run every cell of the matrix selected in this session (all, or those -k picks), two processes at a
    time, and record the exit status, stderr and the files of its directory before and after."""
    selected = [
        (item.callspec.params["case"], item.callspec.params["script"])
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_bad_input" and hasattr(item, "callspec")
    ]
    shared = build_shared(str(tmp_path_factory.mktemp("shared")), selected, script_runner)
    root = tmp_path_factory.mktemp("cases")
    cases = {}
    for case, script in selected:
        case_dir = str(root / f"{case}-{script}")
        os.makedirs(os.path.join(case_dir, "out"))
        flags, words = CASES[case][0](script, case_dir, shared)
        cases[case, script] = case_dir, flags, words, snapshot(case_dir)
    fresh = [key for key in cases if key[0] in FRESH_INTERPRETER]
    forked = [key for key in cases if key[0] not in FRESH_INTERPRETER]
    jobs = []
    for case, script in forked:
        case_dir, flags = cases[case, script][:2]
        logs = str(root / "logs" / f"{case}-{script}")
        os.makedirs(logs)
        jobs.append((script, output_flags(case_dir, flags), logs, {"DIME_DATA": cache_dir(case_dir)}))
    with ThreadPoolExecutor(max_workers=1) as pool:  # new interpreters beside one forked run at a time
        fresh_results = pool.map(lambda key: run_fresh(key[1], cases[key][1], cases[key][0]), fresh)
        results = dict(zip(forked, script_runner.run_many(jobs, parallel=1)))
        results.update(zip(fresh, fresh_results))
    return {
        key: Outcome(flags, words, *results[key], before, snapshot(case_dir))
        for key, (case_dir, flags, words, before) in cases.items()
    }


@pytest.mark.parametrize("case,script", MATRIX, ids=[f"{c}-{s}" for c, s in MATRIX])
def test_bad_input(case, script, outcomes):
    """Exit 2, one "error:" line naming the problem and the fix, nothing on disk changed or added."""
    outcome = outcomes[case, script]
    context = f"{script} {' '.join(outcome.flags)}\nstderr:\n{outcome.stderr}"
    assert outcome.returncode == 2, context
    assert outcome.stderr.endswith("\n") and outcome.stderr.count("\n") == 1, context  # exactly one line
    line = outcome.stderr.strip()
    assert line.startswith("error: ") and "Traceback" not in line, context
    for word in outcome.words:
        assert word in line, f"{word!r} missing; {context}"
    assert outcome.after == outcome.before, context  # no file changed, none added


def test_matrix_covers_every_script():
    """Every script meets the cases that apply to all of them, and the offline ones every data source."""
    for case, (_, scripts) in CASES.items():
        assert set(scripts) <= set(SCRIPTS)
        assert set(OFFLINE) <= set(scripts), case
    assert {s for _, s in MATRIX} == set(SCRIPTS)
    assert all(set(CASES[c][1]) == set(SCRIPTS) for c in FILE_CASES)
