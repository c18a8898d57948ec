"""Offline datasets: every source read into one in-memory form, plus the n-step builder (docs/datasets.md).

`Dataset` holds float32 `observations, actions, rewards, next_observations` and bool `terminals, timeouts`,
rows contiguous per episode; a row ends its episode iff `terminals | timeouts`. Observation vectors are a
dict's keys concatenated in alphabetical order: what `gymnasium.wrappers.FlattenObservation` gives on
shimmy's `dm_control/<domain>-<task>-v0`, and what RL Unplugged and Acme use.

Sources (`load_dataset(spec, env_id)`; `spec` is what the scripts' `--dataset` receives):
  zoo            roll out the task's zoo policies (zoo/manifest.json) with Gaussian action noise, plus
                 uniform-random episodes; built once and cached as HDF5 under $DIME_DATA or ~/.cache/dime-rl
  *.hdf5 / *.h5  project or D4RL HDF5: observations, actions, rewards, terminals (bool or float), optional
                 timeouts and next_observations; infos/* and other keys are ignored
  a Minari id   e.g. D4RL/kitchen/complete-v2: the dataset directory under $MINARI_DATASETS_PATH or
                 ~/.minari/datasets (download it with Minari's own CLI: `minari download <id>`)
  a directory    Minari (`data/main_data.hdf5`, groups episode_<i> with T+1 observations; the env it was
                 recorded on, from data/metadata.json or the file's attributes, rides along as `env_spec`)
                 or RL Unplugged
                 control-suite shards (gzip TFRecord of tf.train.Example, read without TensorFlow, CRC
                 checked): the episodic layout (dm_control_suite_episodes/<task>/train-*) or the 2-step
                 layout (dm_control_suite/<task>/train-*, 1-step transitions only); shards are converted
                 once to the project HDF5 in the cache dir
Decisions the sources leave open:
  - HDF5 without next_observations: s_{t+1} is the next row inside an episode; a row that ends an episode
    by time limit has no successor and is dropped (as D4RL's qlearning_dataset does); a terminal row keeps
    its own observation as s_{t+1} (discount 0 never reads it). Without timeouts, episode boundaries come
    from terminals, and from next_observations[t] != observations[t+1] when next_observations are given.
  - The last row of every source ends an episode (a truncation unless terminal).
  - Reading never writes next to the source; caches are written atomically (temp file + rename).
Every problem raises `DatasetError` with one line naming it and the fix; the scripts print it and exit 2.
CLI: python -m common.datasets info|build|convert|download --help
"""

import argparse
import gzip
import hashlib
import json
import math
import os
import re
import struct
import sys
import time
import urllib.request
from dataclasses import dataclass, field

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMAT_VERSION = 1  # bump to invalidate cached zoo datasets and conversions
RLU_BUCKET = "https://storage.googleapis.com/rl_unplugged"
RLU_SHARDS = 100
MINARI_ID = re.compile(r"(?:[\w.-]+/)+[\w.-]+-v\d+")  # (namespace/)(env_name/)name-v<version>


class DatasetError(Exception):
    """A dataset problem, described in one line that names the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # one line, even around a library's multi-line error


def cache_dir() -> str:
    return os.environ.get("DIME_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "dime-rl")


# --------------------------------------------------------------------------------------- in-memory form
@dataclass
class Dataset:
    observations: np.ndarray  # [T, S] float32
    actions: np.ndarray  # [T, D] float32
    rewards: np.ndarray  # [T] float32
    next_observations: np.ndarray  # [T, S] float32
    terminals: np.ndarray  # [T] bool, true terminal: the bootstrap discount is 0
    timeouts: np.ndarray  # [T] bool, episode cut without a terminal (time limit, end of data)
    env_id: str | None = None
    obs_keys: list = field(default_factory=list)  # [[key, dims], ...] in flattening order
    source: str = ""
    one_step_only: bool = False  # 2-step RL Unplugged transitions: episodes unknown, n-step impossible
    env_spec: dict | None = None  # Minari: the gymnasium env to evaluate in, {id, max_episode_steps, kwargs}

    def __len__(self) -> int:
        return len(self.rewards)

    def episode_ends(self) -> np.ndarray:
        return np.flatnonzero(self.terminals | self.timeouts)

    def episode_returns(self) -> np.ndarray:
        sums = np.concatenate([[0.0], np.cumsum(self.rewards, dtype=np.float64)])
        ends = self.episode_ends() + 1
        return sums[ends] - sums[np.concatenate([[0], ends[:-1]])]

    def summary(self) -> dict:
        returns = self.episode_returns()
        quantiles = np.quantile(returns, [0.0, 0.5, 1.0]) if len(returns) else [np.nan] * 3
        return {
            "source": self.source,
            "env_id": self.env_id,
            "episodes": int(len(returns)),
            "transitions": len(self),
            "return_min": float(quantiles[0]),
            "return_median": float(quantiles[1]),
            "return_max": float(quantiles[2]),
            "obs_keys": [list(k) for k in self.obs_keys],
            "observation_dims": int(self.observations.shape[1]),
            "action_dims": int(self.actions.shape[1]),
            "one_step_only": self.one_step_only,
        }


def make_dataset(obs, actions, rewards, next_obs, terminals, timeouts, **meta) -> Dataset:
    """Cast to the canonical dtypes, force an episode end on the last row, and validate."""
    terminals = np.asarray(terminals).astype(bool).reshape(-1)
    timeouts = np.asarray(timeouts).astype(bool).reshape(-1) & ~terminals
    if len(timeouts):
        timeouts[-1] |= not terminals[-1]
    ds = Dataset(
        observations=np.asarray(obs, np.float32).reshape(len(terminals), -1),
        actions=np.asarray(actions, np.float32).reshape(len(terminals), -1),
        rewards=np.asarray(rewards, np.float32).reshape(-1),
        next_observations=np.asarray(next_obs, np.float32).reshape(len(terminals), -1),
        terminals=terminals,
        timeouts=timeouts,
        **meta,
    )
    validate(ds)
    return ds


def from_episodes(columns: dict[str, list], **meta) -> Dataset:
    """A Dataset from per-episode lists of arrays: obs, actions, rewards, next_obs, terminals, timeouts."""
    c = {k: np.concatenate(v) for k, v in columns.items()}
    return make_dataset(
        c["obs"], c["actions"], c["rewards"], c["next_obs"], c["terminals"], c["timeouts"], **meta
    )


def validate(ds: Dataset) -> None:
    """Empty data, ragged columns and NaN/inf rows are refused."""
    name = ds.source or "the dataset"
    if len(ds) == 0:
        raise DatasetError(f"{name} has no transitions; build or pass a non-empty dataset")
    for key in ("observations", "actions", "next_observations", "terminals", "timeouts"):
        if len(getattr(ds, key)) != len(ds):
            raise DatasetError(f"{name}: {key} has {len(getattr(ds, key))} rows but rewards has {len(ds)}")
    finite = (
        np.isfinite(ds.observations).all(1)
        & np.isfinite(ds.next_observations).all(1)
        & np.isfinite(ds.actions).all(1)
        & np.isfinite(ds.rewards)
    )
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DatasetError(
            f"{name} has {len(bad)} rows with NaN/inf (first at row {bad[0]}); drop those episodes first"
        )


def truncated_at_last_row(terminals: np.ndarray) -> np.ndarray:
    """Timeout flags of one episode: its last row ends it, by truncation unless it is terminal."""
    timeouts = np.zeros(len(terminals), bool)
    timeouts[-1] = not terminals[-1]
    return timeouts


def check_env(ds: Dataset, env_id: str, obs_dims: int, action_dims: int) -> None:
    """The dataset must have the env's observation and action sizes."""
    name = ds.source or "the dataset"
    got = (ds.observations.shape[1], ds.actions.shape[1])
    if got != (obs_dims, action_dims):
        raise DatasetError(
            f"{name} has observation/action dims {got} but {env_id} has {(obs_dims, action_dims)}; "
            f"pass a dataset recorded on {env_id} (or build one: python -m common.datasets build --env-id "
            f"{env_id})"
        )


# --------------------------------------------------------------------------------------------- n-step
def nstep_transitions(ds: Dataset, n: int, gamma: float) -> dict[str, np.ndarray]:
    """(s_t, a_t, R, γ^k·Π d, s_{t+k}, a_{t+k}) per row, k = min(n, steps left in the episode).

    R = Σ_{j<k} γ^j r_{t+j}; the discount is 0 only if the window reaches a true terminal, never at a
    time-limit truncation, where the bootstrap uses s_{t+k} = the last row's next observation. The dataset
    action a_{t+k} at the bootstrap state (the SARSA tuple's second action) exists unless the window reached
    the episode's end: `next_action_valid` says which rows have it.
    """
    if ds.one_step_only and n > 1:
        raise DatasetError(f"{ds.source} holds 2-step transitions (1-step returns only); pass --n-step 1")
    rows = np.arange(len(ds))
    last = ds.episode_ends()[np.searchsorted(ds.episode_ends(), rows)]  # the last row of each row's episode
    k = np.minimum(n, last - rows + 1)
    returns = np.zeros(len(ds), np.float64)
    for j in range(n):
        returns += np.where(j < k, gamma**j * ds.rewards[np.minimum(rows + j, len(ds) - 1)], 0.0)
    final = rows + k - 1
    valid = final < last  # s_{t+k} is a dataset state with its own action
    return {
        "observations": ds.observations,
        "actions": ds.actions,
        "returns": returns.astype(np.float32),
        "discounts": (gamma**k * ~ds.terminals[final]).astype(np.float32),
        "next_observations": ds.next_observations[final],
        "next_actions": ds.actions[np.where(valid, final + 1, final)],
        "next_action_valid": valid,
    }


def discounted_returns(ds: Dataset, gamma: float) -> np.ndarray:
    """Monte-Carlo return of every row, G_t = Σ_j γ^j r_{t+j} to its episode's last row (no bootstrap at a
    time limit: a lower bound there). The offline scripts rank their critic's Q(s_t, a_t) against it."""
    out = np.zeros(len(ds), np.float64)
    running = 0.0
    ends = np.zeros(len(ds), bool)
    ends[ds.episode_ends()] = True
    for t in range(len(ds) - 1, -1, -1):
        running = ds.rewards[t] + (0.0 if ends[t] else gamma * running)
        out[t] = running
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------- project/D4RL HDF5
def open_hdf5(path: str):
    import h5py

    if not os.path.exists(path):
        raise DatasetError(f"dataset file {path} not found; check the path or use --dataset zoo")
    if os.path.isdir(path):
        raise DatasetError(f"{path} is a directory, not an HDF5 file; pass the .hdf5 file inside it")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(
            f"cannot read {path} ({e}): truncated or not HDF5; rebuild or re-download it"
        ) from None


def read_column(h5, key: str, path: str) -> np.ndarray:
    try:
        return h5[key][()]
    except KeyError:
        raise DatasetError(
            f"{path} has no '{key}'; a D4RL-style file needs {key} ({sorted(h5.keys())} found)"
        ) from None
    except OSError as e:
        raise DatasetError(
            f"{path}: cannot read '{key}' ({e}); the file is corrupt, rebuild or re-download it"
        ) from None


def load_hdf5(path: str) -> Dataset:
    """Project or D4RL HDF5 (module docstring for how rows without a successor are handled)."""
    with open_hdf5(path) as h5:
        obs, actions, rewards = (read_column(h5, k, path) for k in ("observations", "actions", "rewards"))
        terminals = read_column(h5, "terminals", path).reshape(-1) > 0.5
        has = {k: k in h5 for k in ("timeouts", "next_observations")}
        timeouts = read_column(h5, "timeouts", path).reshape(-1) > 0.5 if has["timeouts"] else None
        next_obs = read_column(h5, "next_observations", path) if has["next_observations"] else None
        attrs = dict(h5.attrs)
    if not len(obs) == len(actions) == len(rewards) == len(terminals):
        lengths = {
            k: len(v)
            for k, v in zip(
                ("observations", "actions", "rewards", "terminals"), (obs, actions, rewards, terminals)
            )
        }
        raise DatasetError(f"{path}: columns have different lengths {lengths}; the file is corrupt")
    if not len(obs):
        raise DatasetError(f"{path} has no transitions; build or pass a non-empty dataset")
    obs = obs.reshape(len(obs), -1)
    if timeouts is None:
        timeouts = np.zeros(len(obs), bool)
        if next_obs is not None:  # a jump between s'_t and s_{t+1} is an episode boundary
            jump = np.any(next_obs[:-1].reshape(len(obs) - 1, -1) != obs[1:], axis=1)
            timeouts[:-1] = jump & ~terminals[:-1]
    keep = np.ones(len(obs), bool)
    if next_obs is None:
        cut = (timeouts | (np.arange(len(obs)) == len(obs) - 1)) & ~terminals  # ends without a successor
        next_obs = np.concatenate([obs[1:], obs[-1:]])
        next_obs[terminals] = obs[terminals]
        before = np.flatnonzero(cut) - 1
        before = before[before >= 0]
        timeouts = timeouts | cut
        timeouts[before[~(terminals | timeouts)[before]]] = True  # the row before a dropped end ends now
        keep = ~cut
    obs_keys = json.loads(attrs.get("obs_keys", "[]")) if isinstance(attrs.get("obs_keys"), str) else []
    env_id = attrs.get("env_id")
    return make_dataset(
        obs[keep],
        actions[keep],
        rewards[keep],
        next_obs.reshape(len(obs), -1)[keep],
        terminals[keep],
        timeouts[keep],
        env_id=str(env_id) if env_id is not None else None,
        obs_keys=obs_keys,
        source=path,
    )


def save_hdf5(ds: Dataset, path: str, **attrs) -> None:
    """Write the project format (D4RL keys plus next_observations and timeouts) atomically."""
    import h5py

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with h5py.File(tmp, "w") as h5:
        for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
            h5.create_dataset(key, data=getattr(ds, key))
        h5.attrs.update(env_id=ds.env_id or "", obs_keys=json.dumps(ds.obs_keys), **attrs)
        h5.attrs["one_step_only"] = ds.one_step_only
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- Minari
def flatten_group(node) -> tuple[np.ndarray, list]:
    """An HDF5 dataset, or a group of them (dict observations, nested allowed) in alphabetical key order."""
    import h5py

    if isinstance(node, h5py.Dataset):
        value = node[()]
        return value.reshape(len(value), -1), []
    parts = []
    keys = []
    for key in sorted(node.keys()):
        value, sub = flatten_group(node[key])
        parts.append(value)
        keys += [[f"{key}/{k}", d] for k, d in sub] if sub else [[key, value.shape[1]]]
    return np.concatenate(parts, axis=1), keys


def minari_metadata(directory: str, h5) -> dict:
    """Minari ≥ 0.5 keeps its metadata in data/metadata.json, older versions in the HDF5 file's attributes."""
    path = os.path.join(directory, "data", "metadata.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return dict(h5.attrs)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path} is not readable JSON ({e}); download the dataset again") from None


def minari_env_spec(metadata: dict) -> dict | None:
    """The env to evaluate in: Minari's eval_env_spec, else the env_spec it recorded (a gymnasium EnvSpec
    as JSON), reduced to what `gymnasium.make` needs."""
    raw = metadata.get("eval_env_spec") or metadata.get("env_spec")
    if not raw:
        return None
    spec = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    return {
        "id": spec["id"],
        "max_episode_steps": spec.get("max_episode_steps"),
        "kwargs": spec.get("kwargs", {}),
    }


def load_minari(directory: str) -> Dataset:
    """A Minari dataset directory: `data/main_data.hdf5` with one `episode_<i>` group per episode."""
    path = os.path.join(directory, "data", "main_data.hdf5")
    columns = {k: [] for k in ("obs", "next_obs", "actions", "rewards", "terminals", "timeouts")}
    if not os.path.exists(path) and os.path.exists(os.path.join(directory, "data", "metadata.json")):
        raise DatasetError(
            f"{directory} is stored in Minari's arrow format, which this loader does not read; "
            "convert it to Minari's hdf5 format"
        )
    with open_hdf5(path) as h5:
        metadata = minari_metadata(directory, h5)
        names = sorted((k for k in h5.keys() if k.startswith("episode_")), key=lambda k: int(k.split("_")[1]))
        if not names:
            raise DatasetError(f"{path} has no episode_<i> groups; is it a Minari dataset?")
        for name in names:
            episode = h5[name]
            try:
                obs, obs_keys = flatten_group(episode["observations"])
                actions = episode["actions"][()]
                rewards = episode["rewards"][()]
                terminations = episode["terminations"][()]
                truncations = episode["truncations"][()]
            except KeyError as e:
                raise DatasetError(
                    f"{path}: {name} lacks {e}; a Minari episode needs observations, actions, "
                    "rewards, terminations, truncations"
                ) from None
            steps = len(rewards)
            if len(obs) != steps + 1:
                raise DatasetError(f"{path}: {name} has {len(obs)} observations for {steps} steps (need T+1)")
            columns["obs"].append(obs[:-1])
            columns["next_obs"].append(obs[1:])
            columns["actions"].append(actions.reshape(steps, -1))
            columns["rewards"].append(rewards)
            columns["terminals"].append(terminations.astype(bool))
            columns["timeouts"].append(truncations.astype(bool) | truncated_at_last_row(terminations))
    spec = minari_env_spec(metadata)
    meta = dict(env_id=spec and spec["id"], env_spec=spec, obs_keys=obs_keys, source=directory)
    return from_episodes(columns, **meta)


def minari_root() -> str:
    """Where Minari keeps its datasets (its own rule: $MINARI_DATASETS_PATH, else ~/.minari/datasets)."""
    return os.environ.get("MINARI_DATASETS_PATH") or os.path.join(
        os.path.expanduser("~"), ".minari", "datasets"
    )


# ------------------------------------------------------------------------- RL Unplugged TFRecord shards
def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C rotated right by 15 bits plus a constant."""
    import crc32c

    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecords(path: str):
    """Yield the records of one gzip TFRecord file, checking both CRCs of every record."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(
            f"cannot read {path} ({e}): truncated or not gzip; re-download the shard"
        ) from None
    pos = 0
    while pos < len(data):
        header = data[pos : pos + 12]
        if len(header) < 12:
            raise DatasetError(f"{path} ends inside a record header at byte {pos}; re-download the shard")
        (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
        record = data[pos + 12 : pos + 12 + length]
        footer = data[pos + 12 + length : pos + 16 + length]
        if masked_crc32c(header[:8]) != length_crc or len(footer) < 4:
            raise DatasetError(
                f"{path}: bad record header at byte {pos} (CRC mismatch); re-download the shard"
            )
        if masked_crc32c(record) != struct.unpack("<I", footer)[0]:
            raise DatasetError(f"{path}: record at byte {pos} fails its CRC check; re-download the shard")
        yield record
        pos += 16 + length


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        result |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return result, pos


def proto_fields(buf: bytes):
    """Yield (field number, wire type, value) of a protobuf message; value is int or bytes."""
    pos = 0
    while pos < len(buf):
        tag, pos = read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 2:
            size, pos = read_varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + width], pos + width
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def parse_example(record: bytes) -> dict:
    """tf.train.Example → {name: float32 array | int64 array | list of bytes}, without TensorFlow.

    Example{1: Features{1: map entry{1: name, 2: Feature{1: BytesList, 2: FloatList, 3: Int64List}}}}.
    """
    out = {}
    for _, _, features in proto_fields(record):
        for _, _, entry in proto_fields(features):
            fields = {n: v for n, _, v in proto_fields(entry)}
            name = fields[1].decode()
            feature = fields.get(2, b"")
            for kind, _, values in proto_fields(feature):
                items = list(proto_fields(values))
                if kind == 1:  # BytesList
                    out[name] = [v for _, _, v in items]
                elif kind == 2:  # FloatList, packed or not
                    out[name] = np.frombuffer(b"".join(v for _, _, v in items), "<f4")
                else:  # Int64List, packed varints or not
                    ints = []
                    for _, wire, v in items:
                        if wire == 0:
                            ints.append(v)
                        else:
                            pos = 0
                            while pos < len(v):
                                x, pos = read_varint(v, pos)
                                ints.append(x)
                    out[name] = np.array(ints, np.uint64).astype(np.int64)
            out.setdefault(name, np.zeros(0, np.float32))
    return out


def rlu_shards(path: str) -> list[str]:
    """The shard files of a directory (train-*-of-*) or one shard file."""
    if os.path.isfile(path):
        return [path]
    shards = sorted(
        os.path.join(path, f) for f in os.listdir(path) if "-of-" in f and not f.endswith(".part")
    )
    if not shards:
        raise DatasetError(f"{path} has no TFRecord shards (train-XXXXX-of-XXXXX); download them first")
    return shards


def convert_rlu(path: str) -> Dataset:
    """RL Unplugged control-suite shards → Dataset. Episodic examples are realigned as RLDS does.

    Episodic layout (one Example = one episode of L steps, RSA alignment: reward[t], discount[t] arrive
    with observation[t]): transition t = (o_t, a_t, reward[t+1], o_{t+1}), terminal iff discount[t+1] = 0;
    the last action is unused. 2-step layout: (o[0], a[0], reward[0], o[1]), terminal iff discount[0] = 0,
    each transition its own 1-step "episode" (`one_step_only`).
    """
    columns = {k: [] for k in ("obs", "next_obs", "actions", "rewards", "terminals", "timeouts")}
    obs_keys = None
    episodic = None
    for shard in rlu_shards(path):
        for record in read_tfrecords(shard):
            ex = parse_example(record)
            keys = sorted(k[len("observation/") :] for k in ex if k.startswith("observation/"))
            steps = len(ex["reward"])
            obs = np.concatenate([ex[f"observation/{k}"].reshape(steps, -1) for k in keys], axis=1)
            if obs_keys is None:
                obs_keys = [[k, ex[f"observation/{k}"].size // steps] for k in keys]
                episodic = "episode_id" in ex
            actions = ex["action"].reshape(steps, -1)
            if episodic:
                columns["obs"].append(obs[:-1])
                columns["next_obs"].append(obs[1:])
                columns["actions"].append(actions[:-1])
                columns["rewards"].append(ex["reward"][1:])
                terminal = np.zeros(steps - 1, bool)
                terminal[-1] = ex["discount"][-1] == 0.0
                columns["terminals"].append(terminal)
            else:
                columns["obs"].append(obs[:1])
                columns["next_obs"].append(obs[1:2])
                columns["actions"].append(actions[:1])
                columns["rewards"].append(ex["reward"][:1])
                columns["terminals"].append(ex["discount"][:1] == 0.0)
            columns["timeouts"].append(truncated_at_last_row(columns["terminals"][-1]))
    if obs_keys is None:
        raise DatasetError(f"{path} holds no records; re-download the shards")
    task = os.path.basename(os.path.normpath(path if os.path.isdir(path) else os.path.dirname(path)))
    return from_episodes(columns, env_id=task, obs_keys=obs_keys, source=path, one_step_only=not episodic)


def load_rlu(path: str) -> Dataset:
    """Convert shards once; later calls reuse the HDF5 in the cache dir (keyed by shard names and sizes)."""
    shards = rlu_shards(path)
    key = json.dumps([FORMAT_VERSION] + [[os.path.abspath(s), os.path.getsize(s)] for s in shards])
    cached = os.path.join(cache_dir(), f"rlu_{hashlib.sha256(key.encode()).hexdigest()[:16]}.hdf5")
    if not os.path.exists(cached):
        ds = convert_rlu(path)
        save_hdf5(ds, cached, source=path)
    ds = load_hdf5(cached)
    ds.source = path
    ds.one_step_only = bool(read_attr(cached, "one_step_only"))
    return ds


def read_attr(path: str, name: str):
    with open_hdf5(path) as h5:
        return h5.attrs.get(name)


def download_rlu(task: str, layout: str, out: str, shards: int = RLU_SHARDS) -> str:
    """Fetch the public RL Unplugged shards of a task, with progress; `.part` files resume."""
    from tqdm import tqdm

    prefix = {"episodes": "dm_control_suite_episodes", "transitions": "dm_control_suite"}[layout]
    directory = os.path.join(out, prefix, task)
    os.makedirs(directory, exist_ok=True)
    for i in tqdm(range(shards), desc=f"{prefix}/{task}", unit="shard"):
        name = f"train-{i:05d}-of-{RLU_SHARDS:05d}"
        target = os.path.join(directory, name)
        if os.path.exists(target):
            continue
        part = target + ".part"
        done = os.path.getsize(part) if os.path.exists(part) else 0
        request = urllib.request.Request(
            f"{RLU_BUCKET}/{prefix}/{task}/{name}", headers={"Range": f"bytes={done}-"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response, open(part, "ab") as f:
                if response.status == 200 and done:  # the server ignored the range: start over
                    f.truncate(0)
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
        except OSError as e:
            raise DatasetError(
                f"cannot download {RLU_BUCKET}/{prefix}/{task}/{name} ({e}); check the network, or copy the "
                f"shards into {directory} by hand (partial files are kept and resumed)"
            ) from None
        os.replace(part, target)
    return directory


# ------------------------------------------------------------------------------- zoo dataset (default)
def make_env(env_id: str):
    """One control-suite env through shimmy, observations flattened in alphabetical key order."""
    import gymnasium as gym
    import shimmy
    from dm_control import suite

    gym.register_envs(shimmy)
    tasks = {f"{d}_{t}": f"dm_control/{d}-{t}-v0" for d, t in suite.ALL_TASKS}
    if env_id not in tasks:
        raise DatasetError(
            f"--env-id {env_id!r} is not a control-suite task <domain>_<task> (e.g. cheetah_run)"
        )
    env = gym.make(tasks[env_id])
    keys = [[k, int(np.prod(s.shape))] for k, s in env.observation_space.spaces.items()]
    return gym.wrappers.FlattenObservation(env), keys


def zoo_policies(env_id: str) -> list[dict]:
    """Manifest entries of a task's zoo policies, worst to best."""
    manifest = json.load(open(os.path.join(ROOT, "zoo", "manifest.json")))["policies"]
    entries = sorted((e for e in manifest if e["env_id"] == env_id), key=lambda e: e["eval_return_mean"])
    if not entries:
        have = sorted({e["env_id"] for e in manifest})
        raise DatasetError(f"no zoo policies for {env_id} (zoo has {', '.join(have)}); pass --dataset PATH")
    return entries


def zoo_dataset_id(
    env_id: str, episodes: int, seed: int, noise: float, random_fraction: float, gait_fraction: float = 0.0
) -> str:
    recipe = [FORMAT_VERSION, episodes, seed, noise, random_fraction]
    if gait_fraction:  # absent from the default recipe, whose ids (and caches) stay as they were
        recipe.append(gait_fraction)
    digest = hashlib.sha256(json.dumps(recipe).encode())
    for entry in zoo_policies(env_id):
        digest.update(open(os.path.join(ROOT, entry["file"]), "rb").read())
    return f"zoo_{env_id}_{episodes}ep_seed{seed}_{digest.hexdigest()[:8]}"


ZOO_CHUNK = 25  # episodes stepped in lockstep: the unit of work, fixed so results never depend on workers
# Behaviours that are not zoo policies: uniform-random and open-loop gait episodes.
RANDOM = -1
GAIT = -2
GAIT_PERIOD = (10, 60)  # steps per cycle of an open-loop gait, drawn per episode (cheetah_run: returns 0-132)
_WORKER: dict = {}  # per process: the envs and policies of one task, built once


def rollout_chunk(env_id: str, ids: list[int], behaviour: list[int], seed: int, noise: float) -> list[dict]:
    """Episodes `ids` in lockstep: behaviour RANDOM acts uniformly at random; GAIT plays an open-loop gait,
    a_t = clip(amp·sin(2π·t/period + phase)) with one period per episode and an amplitude in [0.3, 1] and a
    phase per action dimension; p ≥ 0 acts clip(μ_p(s) + noise·ε) with one batched call per policy and step.
    Episode e draws its reset seed, gait and noise from default_rng([seed, e]): a function of (seed, e)."""
    import torch

    if _WORKER.get("env_id") != env_id:
        files = [os.path.join(ROOT, e["file"]) for e in zoo_policies(env_id)]
        _WORKER.update(env_id=env_id, envs=[], policies=[torch.export.load(f).module() for f in files])
    envs = _WORKER["envs"]
    envs += [make_env(env_id)[0] for _ in range(len(ids) - len(envs))]
    action_dims = envs[0].action_space.shape[0]
    behaviour = np.asarray(behaviour)
    rngs = [np.random.default_rng([seed, e]) for e in ids]
    obs = np.stack([envs[i].reset(seed=int(r.integers(2**31)))[0] for i, r in enumerate(rngs)])
    gaits = [  # (period, amplitude [D], phase [D]); drawn after the reset seed, for gait episodes only
        (r.uniform(*GAIT_PERIOD), r.uniform(0.3, 1.0, action_dims), r.uniform(0, 2 * np.pi, action_dims))
        if b == GAIT
        else None
        for r, b in zip(rngs, behaviour)
    ]
    steps = [{k: [] for k in ("obs", "actions", "rewards", "next_obs", "terminals")} for _ in ids]
    alive = np.ones(len(ids), bool)
    while alive.any():
        actions = np.zeros((len(ids), action_dims))
        with torch.no_grad():
            for p, policy in enumerate(_WORKER["policies"]):
                idx = np.flatnonzero((behaviour == p) & alive)
                if len(idx):
                    actions[idx] = policy(torch.as_tensor(obs[idx], dtype=torch.float32))[0].numpy()
        for i in np.flatnonzero(alive):
            if behaviour[i] == RANDOM:
                actions[i] = rngs[i].uniform(-1.0, 1.0, action_dims)
            elif behaviour[i] == GAIT:
                period, amplitude, phase = gaits[i]
                actions[i] = amplitude * np.sin(2 * np.pi * len(steps[i]["obs"]) / period + phase)
            else:
                actions[i] += noise * rngs[i].standard_normal(action_dims)
            action = np.clip(actions[i], -1.0, 1.0).astype(np.float32)
            next_obs, reward, terminated, truncated, _ = envs[i].step(action)
            for key, value in zip(steps[i], (obs[i].copy(), action, reward, next_obs, terminated)):
                steps[i][key].append(value)
            obs[i] = next_obs
            alive[i] = not (terminated or truncated)
    return [{k: np.asarray(v) for k, v in episode.items()} for episode in steps]


def single_thread_worker(parent: int) -> None:
    """A build worker: one torch thread; it ends when its parent does (even by SIGKILL). On Linux the kernel
    kills it with its parent; elsewhere a thread polls the parent every half second, which an import that
    holds the GIL (torch's, MuJoCo's) can hold off for seconds."""
    import signal
    import threading

    if sys.platform == "linux":
        import ctypes

        # PR_SET_PDEATHSIG (1): SIGKILL when the thread that started this process ends (the build's thread,
        # which outlives its workers).
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    # Also covers a parent that ended before the prctl call: the first check sees it gone.
    threading.Thread(target=orphaned, daemon=True).start()
    import torch

    torch.set_num_threads(1)


def stop_workers(pool) -> None:
    """Shut a ProcessPoolExecutor down at once: chunks not started are cancelled and its own worker
    processes terminated, the process's other children left alone (Python 3.14's pool.terminate_workers)."""
    # The executor's processes by pid (private, and gone after shutdown: read first).
    workers = list(pool._processes.values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers:
        process.terminate()


def build_zoo_dataset(
    env_id: str,
    episodes: int = 300,
    seed: int = 0,
    noise: float = 0.2,
    random_fraction: float = 0.1,
    workers: int | None = None,
    progress: bool = True,
    gait_fraction: float = 0.0,
) -> Dataset:
    """Roll out the zoo: the first `random_fraction` of the episodes act uniformly at random, the next
    `gait_fraction` play open-loop gaits (many different actions at similar states, a mixed-quality set where
    BC averages the gaits), episode e of the others follows zoo policy e mod P (worst to best) with Gaussian
    action noise (`rollout_chunk`).

    Chunks of ZOO_CHUNK episodes run in `workers` processes (default: one per core).
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    num_policies = len(zoo_policies(env_id))
    num_random, num_gait = (int(round(f * episodes)) for f in (random_fraction, gait_fraction))
    if num_random + num_gait > episodes:
        raise DatasetError(f"random ({random_fraction}) and gait ({gait_fraction}) fractions exceed 1")
    num_zoo = episodes - num_random - num_gait
    behaviour = [RANDOM] * num_random + [GAIT] * num_gait + [i % num_policies for i in range(num_zoo)]
    chunks = [list(range(s, min(s + ZOO_CHUNK, episodes))) for s in range(0, episodes, ZOO_CHUNK)]
    jobs = [(env_id, ids, [behaviour[e] for e in ids], seed, noise) for ids in chunks]
    workers = min(workers or os.cpu_count() or 1, len(chunks))
    bar = tqdm(total=episodes, desc=f"zoo {env_id}", unit="episode", disable=not progress)
    rows = []
    if workers == 1:
        for job in jobs:
            rows += rollout_chunk(*job)
            bar.update(len(job[1]))
    else:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # no forked torch/MuJoCo state
        init = dict(initializer=single_thread_worker, initargs=(os.getpid(),))
        pool = ProcessPoolExecutor(workers, mp_context=context, **init)
        try:
            # Futures, not pool.map: a stop signal inside map cancels its futures behind the executor's back,
            # and the executor's thread then prints an InvalidStateError traceback (Python 3.11).
            futures = [pool.submit(rollout_chunk, *job) for job in jobs]
            for job, future in zip(jobs, futures):
                rows += future.result()
                bar.update(len(job[1]))
        finally:
            # Also on an error or a stop signal: no worker outlives the build.
            stop_workers(pool)
    bar.close()
    columns = {k: [episode[k] for episode in rows] for k in rows[0]}
    columns["timeouts"] = [truncated_at_last_row(t) for t in columns["terminals"]]
    return from_episodes(columns, env_id=env_id, obs_keys=make_env(env_id)[1], source="zoo")


def load_zoo(
    env_id: str,
    episodes: int = 300,
    seed: int = 0,
    noise: float = 0.2,
    random_fraction: float = 0.1,
    progress: bool = True,
    gait_fraction: float = 0.0,
) -> Dataset:
    """The cached zoo dataset of a task, built on first use."""
    dataset_id = zoo_dataset_id(env_id, episodes, seed, noise, random_fraction, gait_fraction)
    path = os.path.join(cache_dir(), f"{dataset_id}.hdf5")
    if not os.path.exists(path):
        start = time.perf_counter()
        recipe = dict(random_fraction=random_fraction, gait_fraction=gait_fraction, progress=progress)
        ds = build_zoo_dataset(env_id, episodes, seed, noise, **recipe)
        save_hdf5(ds, path, source="zoo", dataset_id=dataset_id, build_seconds=time.perf_counter() - start)
    ds = load_hdf5(path)
    ds.source = f"zoo:{dataset_id}"
    return ds


# ------------------------------------------------------------------------------------------ dispatcher
def load_dataset(spec: str, env_id: str | None = None, seed: int = 0) -> Dataset:
    """`--dataset` → Dataset: 'zoo', an .hdf5/.h5 file, a Minari id or directory, or RL Unplugged shards;
    any of them followed by `:reward_scale=c` has every reward multiplied by c (c > 0)."""
    base, marker, scale = spec.rpartition(":reward_scale=")
    if marker:
        try:
            c = float(scale)
        except ValueError:
            c = math.nan
        if not c > 0 or math.isinf(c):
            raise DatasetError(
                f"--dataset {spec}: reward_scale must be a positive number, e.g. {base}:reward_scale=10"
            )
        ds = load_dataset(base, env_id, seed)
        ds.rewards = ds.rewards * np.float32(c)
        ds.source = f"{ds.source}:reward_scale={scale}"
        return ds
    if spec == "zoo":
        if env_id is None:
            raise DatasetError("the zoo dataset needs an env id; pass --env-id")
        return load_zoo(env_id, seed=seed)
    if not os.path.exists(spec) and MINARI_ID.fullmatch(spec):  # a Minari dataset id
        if not os.path.isdir(os.path.join(minari_root(), spec)):
            raise DatasetError(
                f"Minari dataset {spec} is not in {minari_root()}; download it with "
                f"`pip install minari && minari download {spec}` (or set MINARI_DATASETS_PATH)"
            )
        spec = os.path.join(minari_root(), spec)
    if not os.path.exists(spec):
        raise DatasetError(
            f"dataset {spec} not found; pass 'zoo', an .hdf5 file, a Minari id or directory, or RLU shards"
        )
    if os.path.isdir(spec) and os.path.exists(os.path.join(spec, "data", "main_data.hdf5")):
        return load_minari(spec)
    if spec.endswith((".hdf5", ".h5")):
        return load_hdf5(spec)
    return load_rlu(spec)


# ------------------------------------------------------------------------------------------------- CLI
def print_summary(ds: Dataset) -> None:
    i = ds.summary()
    print(f"{i['source']}: {i['episodes']} episodes, {i['transitions']} transitions, env {i['env_id']}")
    returns = f"{i['return_min']:.1f} / {i['return_median']:.1f} / {i['return_max']:.1f}"
    print(f"  episode return min/median/max: {returns}")
    note = "; 2-step transitions: 1-step returns only" if i["one_step_only"] else ""
    print(
        f"  observation dims {i['observation_dims']} = {i['obs_keys']}; action dims {i['action_dims']}{note}"
    )


def main(argv=None) -> None:
    os.environ.setdefault("MUJOCO_GL", "disable")  # rollouts render nothing
    parser = argparse.ArgumentParser(prog="python -m common.datasets", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="episodes, transitions, return statistics, observation keys")
    info.add_argument(
        "dataset", help="'zoo' (with --env-id), an .hdf5 file, a Minari or RL Unplugged directory"
    )
    info.add_argument("--env-id", default=None)
    build = sub.add_parser("build", help="build (or find in the cache) the zoo dataset of a task")
    build.add_argument("--env-id", required=True)
    build.add_argument("--episodes", type=int, default=300)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--noise", type=float, default=0.2, help="stddev of the Gaussian action noise")
    build.add_argument("--random-fraction", type=float, default=0.1, help="share of uniform-random episodes")
    build.add_argument("--gait-fraction", type=float, default=0.0, help="share of open-loop gait episodes")
    convert = sub.add_parser(
        "convert", help="convert RL Unplugged shards or a Minari directory to project HDF5"
    )
    convert.add_argument("source")
    convert.add_argument("--out", required=True, help="the .hdf5 file to write (must not exist)")
    download = sub.add_parser("download", help="fetch public RL Unplugged control-suite shards (resumable)")
    download.add_argument("--task", required=True, help="e.g. cheetah_run")
    download.add_argument("--layout", choices=["episodes", "transitions"], default="episodes")
    download.add_argument("--shards", type=int, default=RLU_SHARDS)
    download.add_argument("--out", default=os.path.join(cache_dir(), "rl_unplugged"))
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            print_summary(load_dataset(args.dataset, args.env_id))
        elif args.command == "build":
            start = time.perf_counter()
            recipe = dict(random_fraction=args.random_fraction, gait_fraction=args.gait_fraction)
            ds = load_zoo(args.env_id, args.episodes, args.seed, args.noise, **recipe)
            print_summary(ds)
            print(
                f"  cached at {os.path.join(cache_dir(), ds.source.split(':', 1)[1])}.hdf5 "
                f"({time.perf_counter() - start:.1f} s)"
            )
        elif args.command == "convert":
            if os.path.exists(args.out):
                raise DatasetError(f"{args.out} exists; pick another --out (nothing was overwritten)")
            ds = (
                load_minari(args.source)
                if os.path.isdir(os.path.join(args.source, "data"))
                else convert_rlu(args.source)
            )
            save_hdf5(ds, args.out, source=args.source)
            print_summary(ds)
            print(f"  written to {args.out}")
        else:
            print(download_rlu(args.task, args.layout, args.out, args.shards))
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
