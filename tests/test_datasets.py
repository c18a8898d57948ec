"""common/datasets.py: every source in its real on-disk layout, n-step returns, validation, zoo builder."""

import gzip
import hashlib
import json
import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from common import datasets
from common.datasets import DatasetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------ writers, independent of the loader's code
def varint(n: int) -> bytes:
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def field(number: int, payload: bytes) -> bytes:  # a length-delimited protobuf field
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def tf_example(features: dict) -> bytes:
    """tf.train.Example: float arrays become FloatList, int arrays Int64List (both packed)."""
    entries = b""
    for name, value in features.items():
        value = np.asarray(value)
        if value.dtype.kind == "f":
            feature = field(2, field(1, value.astype("<f4").tobytes()))
        else:
            feature = field(3, field(1, b"".join(varint(int(v) & (2**64 - 1)) for v in value.reshape(-1))))
        entries += field(1, field(1, name.encode()) + field(2, feature))
    return field(1, entries)


def write_tfrecords(path: str, records: list[bytes], corrupt_at: int | None = None) -> None:
    """gzip TFRecord with TensorBoard's pure-Python CRC-32C; optionally flip one payload byte."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    out = b""
    for record in records:
        length = struct.pack("<Q", len(record))
        out += (
            length
            + struct.pack("<I", masked_crc32c(length))
            + record
            + struct.pack("<I", masked_crc32c(record))
        )
    if corrupt_at is not None:
        out = out[:corrupt_at] + bytes([out[corrupt_at] ^ 0xFF]) + out[corrupt_at + 1 :]
    with gzip.open(path, "wb") as f:
        f.write(out)


def episode_arrays(rng, steps: int, obs_dims=(2, 3), action_dims: int = 2) -> dict:
    """Random observation dict {position, velocity} with steps + 1 entries, actions and rewards."""
    obs = {
        "velocity": rng.normal(size=(steps + 1, obs_dims[1])),
        "position": rng.normal(size=(steps + 1, obs_dims[0])),
    }
    return {
        "obs": obs,
        "actions": rng.uniform(-1, 1, (steps, action_dims)),
        "rewards": rng.uniform(0, 1, steps),
    }


def flat(obs: dict) -> np.ndarray:
    return np.concatenate([obs[k] for k in sorted(obs)], axis=1).astype(np.float32)


def file_digest(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# -------------------------------------------------------------------------------- project/D4RL HDF5
def test_d4rl_hdf5_float_terminals_without_timeouts_or_next_observations(tmp_path):
    rng = np.random.default_rng(0)
    obs, actions, rewards = rng.normal(size=(7, 3)), rng.normal(size=(7, 2)), rng.normal(size=7)
    terminals = np.array([0, 0, 0, 1, 0, 0, 0], np.float32)  # episode 0: rows 0-3 (terminal), episode 1: 4-6
    path = str(tmp_path / "d4rl.hdf5")
    with h5py.File(path, "w") as h5:
        for key, value in dict(
            observations=obs, actions=actions, rewards=rewards, terminals=terminals
        ).items():
            h5.create_dataset(key, data=value)
        h5.create_dataset("infos/qpos", data=np.zeros((7, 4)))
    before = file_digest(path)
    ds = datasets.load_hdf5(path)
    assert file_digest(path) == before  # reading modifies nothing
    keep = [0, 1, 2, 3, 4, 5]  # the last row has no successor observation: dropped
    np.testing.assert_array_equal(ds.observations, obs[keep].astype(np.float32))
    np.testing.assert_array_equal(ds.actions, actions[keep].astype(np.float32))
    np.testing.assert_array_equal(ds.rewards, rewards[keep].astype(np.float32))
    np.testing.assert_array_equal(ds.next_observations, obs[[1, 2, 3, 3, 5, 6]].astype(np.float32))
    np.testing.assert_array_equal(ds.terminals, [0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(ds.timeouts, [0, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(ds.episode_returns(), [rewards[:4].sum(), rewards[4:6].sum()], rtol=1e-6)


def test_d4rl_hdf5_timeouts_and_next_observation_jumps_split_episodes(tmp_path):
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(6, 3))
    next_obs = np.concatenate([obs[1:], rng.normal(size=(1, 3))])
    next_obs[2] = rng.normal(size=3)  # s'_2 != s_3: an episode boundary without a timeouts key
    path = str(tmp_path / "d4rl.hdf5")
    with h5py.File(path, "w") as h5:
        h5["observations"], h5["next_observations"] = obs, next_obs
        h5["actions"], h5["rewards"], h5["terminals"] = rng.normal(size=(6, 1)), np.ones(6), np.zeros(6, bool)
    ds = datasets.load_hdf5(path)
    assert len(ds) == 6
    np.testing.assert_array_equal(ds.timeouts, [0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(ds.next_observations, next_obs.astype(np.float32))
    np.testing.assert_array_equal(ds.episode_returns(), [3.0, 3.0])


def test_project_hdf5_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    ds = datasets.make_dataset(
        rng.normal(size=(5, 3)),
        rng.normal(size=(5, 2)),
        rng.normal(size=5),
        rng.normal(size=(5, 3)),
        [0, 1, 0, 0, 0],
        [0, 0, 0, 0, 1],
        env_id="cheetah_run",
        obs_keys=[["a", 1], ["b", 2]],
        source="x",
    )
    path = str(tmp_path / "project.hdf5")
    datasets.save_hdf5(ds, path)
    back = datasets.load_hdf5(path)
    for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(back, key), getattr(ds, key))
    assert (back.env_id, back.obs_keys) == ("cheetah_run", [["a", 1], ["b", 2]])


def test_reward_scale_multiplies_every_reward_and_names_itself(tmp_path):
    """`<spec>:reward_scale=c` is the dataset `spec` with every reward times c (nothing else changed), and its
    source says so; a scale that is not a positive finite number is refused with the fix."""
    rng = np.random.default_rng(3)
    ds = datasets.make_dataset(*(rng.normal(size=s) for s in ((6, 3), (6, 2), 6, (6, 3))), [0] * 6, [0] * 6)
    path = str(tmp_path / "d.hdf5")
    datasets.save_hdf5(ds, path)
    plain, scaled = datasets.load_dataset(path), datasets.load_dataset(f"{path}:reward_scale=10")
    np.testing.assert_allclose(scaled.rewards, 10 * plain.rewards, rtol=1e-6)
    for key in ("observations", "actions", "next_observations", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(scaled, key), getattr(plain, key))
    assert scaled.source == f"{plain.source}:reward_scale=10"
    for bad in ("0", "-1", "inf", "nan", "ten", ""):
        with pytest.raises(DatasetError, match="reward_scale.*positive number"):
            datasets.load_dataset(f"{path}:reward_scale={bad}")


# ---------------------------------------------------------------------------------------------- Minari
def write_minari(directory, episodes: list[dict]) -> None:
    os.makedirs(directory / "data")
    with h5py.File(directory / "data" / "main_data.hdf5", "w") as h5:
        h5.attrs["env_spec"] = json.dumps({"id": "dm_control/cartpole-swingup-v0"})
        h5.attrs["total_episodes"] = len(episodes)
        for i, ep in enumerate(episodes):
            group = h5.create_group(f"episode_{i}")
            for key, value in ep["obs"].items():  # dict observations: one sub-dataset per key
                group.create_dataset(f"observations/{key}", data=value)
            steps = len(ep["rewards"])
            group["actions"], group["rewards"] = ep["actions"], ep["rewards"]
            group["terminations"], group["truncations"] = ep["terminations"], ep["truncations"]
            group.create_dataset("infos/success", data=np.zeros(steps, bool))


def test_minari_directory(tmp_path):
    rng = np.random.default_rng(3)
    episodes = [episode_arrays(rng, 4), episode_arrays(rng, 3)]
    episodes[0].update(terminations=np.array([0, 0, 0, 1], bool), truncations=np.zeros(4, bool))
    episodes[1].update(terminations=np.zeros(3, bool), truncations=np.array([0, 0, 1], bool))
    write_minari(tmp_path / "minari", episodes)
    ds = datasets.load_dataset(str(tmp_path / "minari"))
    obs = [flat(ep["obs"]) for ep in episodes]
    np.testing.assert_array_equal(ds.observations, np.concatenate([o[:-1] for o in obs]))
    np.testing.assert_array_equal(ds.next_observations, np.concatenate([o[1:] for o in obs]))
    np.testing.assert_array_equal(
        ds.actions, np.concatenate([ep["actions"] for ep in episodes]).astype(np.float32)
    )
    np.testing.assert_array_equal(ds.terminals, [0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(ds.timeouts, [0, 0, 0, 0, 0, 0, 1])
    assert ds.obs_keys == [["position", 2], ["velocity", 3]] and ds.env_id == "dm_control/cartpole-swingup-v0"


# ------------------------------------------------------------------------------ RL Unplugged TFRecords
def rlu_episode(ep: dict, terminal: bool, episode_id: int) -> bytes:
    """Episodic layout, RSA alignment: reward[t], discount[t] arrive with observation[t]."""
    steps = len(ep["rewards"]) + 1
    reward = np.concatenate([[0.0], ep["rewards"]])
    discount = np.ones(steps)
    discount[-1] = 0.0 if terminal else 1.0
    actions = np.concatenate([ep["actions"], np.zeros((1, ep["actions"].shape[1]))])  # last action unused
    features = {f"observation/{k}": v.reshape(-1) for k, v in ep["obs"].items()}
    features.update(action=actions.reshape(-1), reward=reward, discount=discount, step_type=np.ones(steps))
    features.update(episode_id=np.array([episode_id]), timestamp=np.array([-5]))  # negative int64 too
    return tf_example(features)


def test_rlu_episodic_layout_is_realigned(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    episodes = [episode_arrays(rng, 4), episode_arrays(rng, 5), episode_arrays(rng, 3)]
    task = tmp_path / "dm_control_suite_episodes" / "cartpole_swingup"
    os.makedirs(task)
    write_tfrecords(
        str(task / "train-00000-of-00002"),
        [rlu_episode(episodes[0], True, 0), rlu_episode(episodes[1], False, 1)],
    )
    write_tfrecords(str(task / "train-00001-of-00002"), [rlu_episode(episodes[2], False, 2)])
    before = file_digest(str(task / "train-00000-of-00002"))
    monkeypatch.setenv("DIME_DATA", str(tmp_path / "cache"))
    ds = datasets.load_dataset(str(task))
    assert file_digest(str(task / "train-00000-of-00002")) == before
    obs = [flat(ep["obs"]) for ep in episodes]
    np.testing.assert_array_equal(ds.observations, np.concatenate([o[:-1] for o in obs]))
    np.testing.assert_array_equal(ds.next_observations, np.concatenate([o[1:] for o in obs]))
    np.testing.assert_allclose(ds.rewards, np.concatenate([ep["rewards"] for ep in episodes]), rtol=1e-6)
    np.testing.assert_array_equal(ds.terminals, [0, 0, 0, 1] + [0] * 8)
    np.testing.assert_array_equal(ds.timeouts, [0] * 8 + [1, 0, 0, 1])
    assert ds.obs_keys == [["position", 2], ["velocity", 3]] and not ds.one_step_only
    assert len(os.listdir(tmp_path / "cache")) == 1  # converted once into the cache dir
    again = datasets.load_dataset(str(task))
    np.testing.assert_array_equal(again.observations, ds.observations)
    # n-step across the realigned episodes: 2-step return of row 2 in the terminal episode
    n = datasets.nstep_transitions(ds, 2, 0.9)
    assert n["discounts"][2] == 0.0 and n["returns"][2] == pytest.approx(ds.rewards[2] + 0.9 * ds.rewards[3])


def test_rlu_two_step_layout_is_one_step_only(tmp_path):
    rng = np.random.default_rng(5)
    records, expected = [], []
    for i in range(3):
        ep = episode_arrays(rng, 2)  # rows [x_t, x_{t+1}]
        discount = np.array([0.0 if i == 1 else 1.0, 1.0])
        features = {f"observation/{k}": v[:2].reshape(-1) for k, v in ep["obs"].items()}
        features.update(
            action=ep["actions"].reshape(-1),
            reward=ep["rewards"],
            discount=discount,
            step_type=np.array([1.0, 1.0]),
            episodic_reward=np.zeros(2),
        )
        records.append(tf_example(features))
        expected.append((flat(ep["obs"])[0], flat(ep["obs"])[1], ep["actions"][0], ep["rewards"][0]))
    task = tmp_path / "dm_control_suite" / "cartpole_swingup"
    os.makedirs(task)
    write_tfrecords(str(task / "train-00000-of-00001"), records)
    ds = datasets.convert_rlu(str(task))
    assert ds.one_step_only and len(ds) == 3
    np.testing.assert_array_equal(ds.observations, np.stack([e[0] for e in expected]))
    np.testing.assert_array_equal(ds.next_observations, np.stack([e[1] for e in expected]))
    np.testing.assert_array_equal(ds.terminals, [0, 1, 0])
    np.testing.assert_array_equal(ds.timeouts, [1, 0, 1])
    with pytest.raises(DatasetError, match="--n-step 1"):
        datasets.nstep_transitions(ds, 5, 0.99)
    np.testing.assert_allclose(datasets.nstep_transitions(ds, 1, 0.99)["discounts"], [0.99, 0.0, 0.99])


@pytest.mark.parametrize("corruption", ["crc", "truncated"])
def test_rlu_corrupt_shards_are_refused(tmp_path, corruption):
    ep = episode_arrays(np.random.default_rng(6), 3)
    path = str(tmp_path / "train-00000-of-00001")
    write_tfrecords(path, [rlu_episode(ep, False, 0)], corrupt_at=40 if corruption == "crc" else None)
    if corruption == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="CRC" if corruption == "crc" else "truncated"):
        datasets.convert_rlu(path)


def test_tfrecord_crc_matches_a_known_vector():
    crc = datasets.masked_crc32c(b"123456789")
    unmasked = ((crc - 0xA282EAD8) & 0xFFFFFFFF) << 15 & 0xFFFFFFFF | ((crc - 0xA282EAD8) & 0xFFFFFFFF) >> 17
    assert unmasked == 0xE3069283  # CRC-32C check value


# ---------------------------------------------------------------------------------------------- n-step
def test_nstep_matches_a_plain_loop():
    rng = np.random.default_rng(7)
    size = 40
    terminals, timeouts = np.zeros(size, bool), np.zeros(size, bool)
    terminals[[6, 20]], timeouts[[11, 12, 30]] = True, True
    ds = datasets.make_dataset(
        rng.normal(size=(size, 2)),
        rng.normal(size=(size, 1)),
        rng.normal(size=size),
        rng.normal(size=(size, 2)),
        terminals,
        timeouts,
    )
    for n, gamma in ((1, 0.99), (3, 0.9), (5, 0.5)):
        out = datasets.nstep_transitions(ds, n, gamma)
        for t in range(size):
            ret, discount, j = 0.0, 1.0, t
            while True:
                ret += discount * ds.rewards[j]
                discount *= gamma
                if ds.terminals[j]:
                    discount = 0.0
                if ds.terminals[j] or ds.timeouts[j] or j - t + 1 == n:
                    break
                j += 1
            assert out["returns"][t] == pytest.approx(ret, rel=1e-5), (n, t)
            assert out["discounts"][t] == pytest.approx(discount, rel=1e-6), (n, t)
            np.testing.assert_array_equal(out["next_observations"][t], ds.next_observations[j])
            reached_end = ds.terminals[j] or ds.timeouts[j]
            assert out["next_action_valid"][t] == (not reached_end)
            if not reached_end:  # the SARSA tuple's second action: the dataset action at s_{t+k}
                np.testing.assert_array_equal(out["next_actions"][t], ds.actions[j + 1])


# ------------------------------------------------------------------------------------------ validation
def write_columns(path, **columns):
    with h5py.File(path, "w") as h5:
        for key, value in columns.items():
            h5[key] = value


def good_columns(size=5):
    rng = np.random.default_rng(8)
    return dict(
        observations=rng.normal(size=(size, 3)),
        actions=rng.normal(size=(size, 2)),
        rewards=np.ones(size),
        terminals=np.zeros(size),
    )


@pytest.mark.parametrize(
    "problem,match",
    [
        ("missing", "not found"),
        ("truncated", "truncated or not HDF5"),
        ("no_actions", "no 'actions'"),
        ("nan", "NaN/inf"),
        ("empty", "no transitions"),
    ],
)
def test_bad_files_are_refused_with_one_line(tmp_path, problem, match):
    path = str(tmp_path / "data.hdf5")
    columns = good_columns()
    if problem == "truncated":
        write_columns(path, **columns)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 3])
    elif problem == "no_actions":
        del columns["actions"]
        write_columns(path, **columns)
    elif problem == "nan":
        columns["observations"][2, 1] = np.nan
        write_columns(path, **columns)
    elif problem == "empty":
        write_columns(path, **{k: v[:0] for k, v in columns.items()})
    digest = file_digest(path) if os.path.exists(path) else None
    with pytest.raises(DatasetError, match=match) as info:
        datasets.load_dataset(path)
    assert "\n" not in str(info.value)
    assert (file_digest(path) if os.path.exists(path) else None) == digest  # nothing on disk changed


def test_dimension_mismatch_with_the_env_is_refused(tmp_path):
    path = str(tmp_path / "data.hdf5")
    write_columns(path, **good_columns())
    with pytest.raises(DatasetError, match="pass a dataset recorded on cheetah_run"):
        datasets.check_env(datasets.load_dataset(path), "cheetah_run", 17, 6)


def test_cli_prints_one_error_line_and_exits_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "common.datasets", "info", str(tmp_path / "missing.hdf5")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")


def test_cli_info_prints_statistics(tmp_path):
    path = str(tmp_path / "data.hdf5")
    write_columns(path, **good_columns(6))
    result = subprocess.run(
        [sys.executable, "-m", "common.datasets", "info", path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "1 episodes, 5 transitions" in result.stdout and "min/median/max: 5.0 / 5.0 / 5.0" in result.stdout


# -------------------------------------------------------------------------------------- zoo dataset
@pytest.fixture(scope="module")
def zoo_cartpole():
    return datasets.build_zoo_dataset(
        "cartpole_swingup", episodes=4, seed=3, random_fraction=0.25, workers=1, progress=False
    )


def test_zoo_dataset_replays_in_the_gymnasium_env(zoo_cartpole):
    """Observations are what FlattenObservation(gymnasium.make('dm_control/...')) returns for that state."""
    import gymnasium as gym
    import shimmy

    gym.register_envs(shimmy)
    ds = zoo_cartpole
    assert len(ds) == 4000 and len(ds.episode_ends()) == 4 and ds.timeouts[ds.episode_ends()].all()
    env = gym.wrappers.FlattenObservation(gym.make("dm_control/cartpole-swingup-v0"))
    for episode in (0, 2):  # uniform-random, then a zoo policy with noise
        rows = slice(episode * 1000, (episode + 1) * 1000)
        reset_seed = int(np.random.default_rng([3, episode]).integers(2**31))
        obs, _ = env.reset(seed=reset_seed)
        np.testing.assert_array_equal(ds.observations[rows][0], obs.astype(np.float32))
        for t, action in enumerate(ds.actions[rows]):
            obs, reward, *_ = env.step(action)
            np.testing.assert_array_equal(ds.next_observations[rows][t], obs.astype(np.float32))
            assert ds.rewards[rows][t] == np.float32(reward)
    returns = ds.episode_returns()
    assert returns[0] < returns[1:].max()  # random < a zoo policy


def test_gait_episodes_play_their_open_loop_gait_and_leave_the_others_unchanged(zoo_cartpole):
    """A gait episode's actions are amp·sin(2π·t/period + phase), drawn from default_rng([seed, e]) after
    its reset seed; adding gait episodes changes neither the random episodes nor the default recipe's id."""
    mixed = datasets.build_zoo_dataset(
        "cartpole_swingup",
        episodes=4,
        seed=3,
        random_fraction=0.25,
        gait_fraction=0.25,
        workers=1,
        progress=False,
    )
    np.testing.assert_array_equal(mixed.actions[:1000], zoo_cartpole.actions[:1000])  # episode 0: random
    rng = np.random.default_rng([3, 1])  # episode 1 is the gait (cartpole: one action dimension)
    rng.integers(2**31)  # its reset seed
    period, amplitude = rng.uniform(*datasets.GAIT_PERIOD), rng.uniform(0.3, 1.0, 1)
    phase = rng.uniform(0, 2 * np.pi, 1)
    expected = amplitude * np.sin(2 * np.pi * np.arange(1000)[:, None] / period + phase)
    np.testing.assert_allclose(mixed.actions[1000:2000], expected.astype(np.float32), atol=1e-6)
    default = datasets.zoo_dataset_id("cartpole_swingup", 300, 0, 0.2, 0.1)
    assert datasets.zoo_dataset_id("cartpole_swingup", 300, 0, 0.2, 0.1, gait_fraction=0.0) == default
    assert datasets.zoo_dataset_id("cartpole_swingup", 300, 0, 0.2, 0.0, gait_fraction=0.5) != default


def test_zoo_dataset_is_deterministic_and_cached(tmp_path, monkeypatch, zoo_cartpole):
    again = datasets.build_zoo_dataset(
        "cartpole_swingup", episodes=4, seed=3, random_fraction=0.25, workers=2, progress=False
    )
    np.testing.assert_array_equal(again.actions, zoo_cartpole.actions)  # same with 2 worker processes
    monkeypatch.setenv("DIME_DATA", str(tmp_path))
    ds = datasets.load_zoo("cartpole_swingup", episodes=2, seed=0, progress=False)
    (cached,) = os.listdir(tmp_path)
    assert ds.source == f"zoo:{cached[:-5]}" and cached.startswith("zoo_cartpole_swingup_2ep_seed0_")
    mtime = os.path.getmtime(tmp_path / cached)
    datasets.load_zoo("cartpole_swingup", episodes=2, seed=0, progress=False)
    assert os.path.getmtime(tmp_path / cached) == mtime  # reused, not rebuilt


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid`, from /proc."""
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        # The fields after the command name in parentheses: state, parent pid, ...
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie waiting for its reaper counts as ended)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def running_workers(pid: int) -> list[int]:
    """The multiprocessing workers of `pid` that run their initializer's torch import or are past it."""
    workers = []
    for child in children(pid):
        try:
            command = open(f"/proc/{child}/cmdline").read()
            maps = open(f"/proc/{child}/maps").read()
        except OSError:
            continue
        if "spawn_main" in command and "libtorch" in maps:
            workers.append(child)
    return workers


def three_step_chunk(
    env_id: str, ids: list[int], behaviour: list[int], seed: int, noise: float
) -> list[dict]:
    """rollout_chunk's stand-in in the build's workers: three zero steps per episode in cartpole's shapes."""
    steps = dict(
        obs=np.zeros((3, 5)), actions=np.zeros((3, 1)), rewards=np.zeros(3), terminals=np.zeros(3, bool)
    )
    return [dict(steps, next_obs=np.zeros((3, 5))) for _ in ids]


def plain_worker(parent: int) -> None:
    """single_thread_worker's stand-in: a worker that does not import torch (seconds on a busy machine)."""


def test_the_build_ends_its_own_workers_and_no_other_child(monkeypatch):
    """The clean-up after a two-worker build terminates the pool's processes within a second, and not an
    unrelated multiprocessing child of the same process. The workers roll out three-step stand-in
    episodes: what is tested is the pool, not the rollouts."""
    unrelated = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,), daemon=True)
    unrelated.start()
    # One episode per chunk: two episodes are two chunks, so two worker processes.
    monkeypatch.setattr(datasets, "ZOO_CHUNK", 1)
    monkeypatch.setattr(datasets, "rollout_chunk", three_step_chunk)
    monkeypatch.setattr(datasets, "single_thread_worker", plain_worker)
    try:
        ds = datasets.build_zoo_dataset("cartpole_swingup", episodes=2, workers=2, progress=False)
        assert len(ds) == 6 and len(ds.episode_ends()) == 2
        deadline = time.monotonic() + 1.0
        while set(multiprocessing.active_children()) - {unrelated} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert unrelated.is_alive(), "the build's clean-up ended an unrelated child"
        assert multiprocessing.active_children() == [unrelated], "a build worker outlived the build"
    finally:
        unrelated.terminate()
        unrelated.join()


BUILD = """
import signal, sys
from common import datasets

datasets.ZOO_CHUNK = 1
if sys.argv[1] == "exits":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
datasets.build_zoo_dataset("cartpole_swingup", episodes=50, workers=2, progress=False)
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads child processes from /proc")
@pytest.mark.parametrize("on_sigterm", ["exits", "dies"])
def test_kill_during_the_build_leaves_no_worker_alive_a_second_later(on_sigterm):
    """`kill PID` of a process building a zoo dataset with two workers, once both workers run: one second
    later none of its child processes is alive and it printed no traceback. "exits": SIGTERM raises
    SystemExit as the scripts' handler does, and the build's clean-up terminates its workers; "dies": the
    default action (`python -m common.datasets build`) ends the process at once, and the kernel ends its
    workers with it (Linux's parent-death signal, set first in each worker)."""
    build = subprocess.Popen(
        [sys.executable, "-c", BUILD, on_sigterm], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        workers = []
        while len(workers) < 2 and time.monotonic() < deadline:
            assert build.poll() is None, build.stderr.read()
            time.sleep(0.05)
            workers = running_workers(build.pid)
        processes = children(build.pid)
        assert len(workers) == 2 and set(workers) <= set(processes)
        build.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert [pid for pid in processes if alive(pid)] == []
    finally:
        build.kill()
    build.wait()
    assert "Traceback" not in build.stderr.read()


def test_zoo_for_an_unknown_task_names_the_fix():
    with pytest.raises(DatasetError, match="pass --dataset PATH"):
        datasets.load_dataset("zoo", "ball_in_cup_catch")


def test_rlu_observations_equal_flatten_observation_of_the_same_state(tmp_path):
    """Real dm_control observations (walker: native key order orientations, height, velocity) written as an
    RL Unplugged episode come back equal to FlattenObservation's vector for the same observation dict."""
    import gymnasium as gym
    import shimmy
    from dm_control import suite

    gym.register_envs(shimmy)
    env = suite.load("walker", "walk", task_kwargs={"random": 0})
    rng = np.random.default_rng(9)
    steps = [env.reset()] + [env.step(rng.uniform(-1, 1, 6)) for _ in range(5)]
    keys = list(steps[0].observation)
    assert keys != sorted(keys)
    obs = {k: np.stack([np.asarray(s.observation[k], np.float32).reshape(-1) for s in steps]) for k in keys}
    ep = {"obs": obs, "actions": rng.uniform(-1, 1, (5, 6)), "rewards": np.ones(5)}
    write_tfrecords(str(tmp_path / "train-00000-of-00001"), [rlu_episode(ep, False, 0)])
    ds = datasets.convert_rlu(str(tmp_path / "train-00000-of-00001"))
    flatten = gym.wrappers.FlattenObservation(gym.make("dm_control/walker-walk-v0"))
    for t, step in enumerate(steps[:-1]):
        expected = flatten.observation({k: np.asarray(v, np.float32) for k, v in step.observation.items()})
        np.testing.assert_array_equal(ds.observations[t], expected.astype(np.float32))
    assert [k for k, _ in ds.obs_keys] == sorted(keys)


def test_download_without_network_fails_with_one_line_and_keeps_nothing_half_written(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "RLU_BUCKET", "http://127.0.0.1:9/rl_unplugged")  # nothing listens there
    with pytest.raises(DatasetError, match="cannot download .* check the network") as info:
        datasets.download_rlu("cheetah_run", "episodes", str(tmp_path), shards=1)
    assert "\n" not in str(info.value)
    shard_dir = tmp_path / "dm_control_suite_episodes" / "cheetah_run"
    assert not [f for f in os.listdir(shard_dir) if not f.endswith(".part")]  # no shard claimed complete
