"""D4RL tasks through Minari: Franka Kitchen and Ant Maze datasets in Minari's layout, made here by rolling
out the real gymnasium-robotics envs, load, train and evaluate with the D4RL metric; bad input fails."""

import contextlib
import copy
import importlib
import io
import json
import os

import gymnasium as gym
import h5py
import mujoco
import numpy as np
import pytest
import torch

from common import datasets

with contextlib.redirect_stderr(io.StringIO()):
    import gymnasium_robotics

gym.register_envs(gymnasium_robotics)

KITCHEN = (
    "FrankaKitchen-v1",
    {"tasks_to_complete": ["microwave", "kettle", "light switch", "slide cabinet"]},
)
ANTMAZE = ("AntMaze_UMaze-v5", {"continuing_task": True, "reset_target": False})
TINY = dict(hidden_sizes=(16,), batch_size=8, num_samples=3, total_steps=4, eval_every=2, eval_episodes=2)
TINY.update(checkpoint_every=0, log_every=2)
STEPS = 12  # episode length of the made datasets (and of their recorded evaluation env)


def write_group(group, value: dict) -> None:
    for key, item in value.items():
        if isinstance(item, dict):
            write_group(group.create_group(key), item)
        else:
            group.create_dataset(key, data=item)


def stack(observations: list):
    if isinstance(observations[0], dict):
        return {k: stack([o[k] for o in observations]) for k in observations[0]}
    return np.stack(observations)


def make_minari(root, env_id: str, kwargs: dict, episodes: int = 2, metadata_json: bool = True) -> tuple:
    """A Minari dataset of random-action episodes: data/main_data.hdf5 with episode_<i> groups whose
    (nested) dict observations are sub-groups; the env spec in data/metadata.json (Minari ≥ 0.5) or in the
    HDF5 attributes (older Minari). Returns the directory and the raw dict observations of episode 0."""
    env = gym.make(env_id, max_episode_steps=STEPS, **kwargs)
    spec = json.dumps({"id": env_id, "entry_point": "x", "max_episode_steps": STEPS, "kwargs": kwargs})
    os.makedirs(root / "data")
    first = None
    with h5py.File(root / "data" / "main_data.hdf5", "w") as h5:
        for e in range(episodes):
            obs, _ = env.reset(seed=e)
            observations, columns, done = [copy.deepcopy(obs)], {k: [] for k in "arts"}, False
            while not done:
                action = env.action_space.sample()
                obs, reward, terminated, truncated, _ = env.step(action)
                observations.append(copy.deepcopy(obs))  # the env reuses its dicts
                for k, v in zip("arts", (action, reward, terminated, truncated)):
                    columns[k].append(v)
                done = terminated or truncated
            group = h5.create_group(f"episode_{e}")
            write_group(group.create_group("observations"), stack(observations))
            for name, k in zip(("actions", "rewards", "terminations", "truncations"), "arts"):
                group[name] = np.array(columns[k])
            first = first or observations
        if not metadata_json:
            h5.attrs["env_spec"] = spec
    if metadata_json:
        with open(root / "data" / "metadata.json", "w") as f:
            json.dump({"data_format": "hdf5", "env_spec": spec, "eval_env_spec": spec}, f)
    return str(root), first


def run(script: str, dataset: str, env_id: str, output_dir, **overrides) -> dict:
    module = importlib.import_module(script)
    tradeoff = {"eval_alphas": (0.3, 0.9)} if script == "dime_multi" else {"alpha": 0.5}
    flags = {**TINY, **tradeoff, "env_id": env_id, "dataset": dataset, "output_dir": str(output_dir)}
    return module.main(module.Args(**{**flags, **overrides}))


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    return make_minari(tmp_path_factory.mktemp("minari") / "kitchen", *KITCHEN)


@pytest.fixture(scope="module")
def antmaze(tmp_path_factory):
    return make_minari(tmp_path_factory.mktemp("minari") / "antmaze", *ANTMAZE, metadata_json=False)


@pytest.mark.parametrize("which", ["kitchen", "antmaze"])
def test_minari_observations_are_what_the_flattened_env_returns(which, request):
    directory, raw = request.getfixturevalue(which)
    env_id, kwargs = KITCHEN if which == "kitchen" else ANTMAZE
    ds = datasets.load_dataset(directory)
    assert ds.env_spec == {"id": env_id, "max_episode_steps": STEPS, "kwargs": kwargs}
    assert (len(ds), len(ds.episode_ends())) == (2 * STEPS, 2)
    space = gym.make(env_id, **kwargs).observation_space
    flat = np.stack([gym.spaces.flatten(space, o) for o in raw]).astype(np.float32)
    np.testing.assert_array_equal(ds.observations[:STEPS], flat[:-1])
    np.testing.assert_array_equal(ds.next_observations[:STEPS], flat[1:])


def test_dime_bc_trains_on_franka_kitchen_with_the_recorded_env(kitchen, tmp_path):
    results = run("dime_bc", kitchen[0], "FrankaKitchen-v1", tmp_path)
    assert json.loads(results["args"]["env_kwargs"]) == {**KITCHEN[1], "max_episode_steps": STEPS}
    for e in results["evaluations"]:
        assert len(e["d4rl_scores"]) == 2 and all(s in (0, 1, 2, 3, 4) for s in e["d4rl_scores"])
    assert results["final"]["d4rl_score"] == results["evaluations"][-1]["d4rl_score"]


def test_dime_multi_trains_on_ant_maze_and_scores_every_alpha(antmaze, tmp_path):
    results = run("dime_multi", antmaze[0], "AntMaze_UMaze-v5", tmp_path, variant="awbc")
    assert [f["alpha"] for f in results["final"]] == [0.3, 0.9]
    assert all(0.0 <= f["d4rl_score"] <= 1.0 for f in results["final"])


class Scripted(gym.vector.VectorWrapper):
    """Puts env 0 into a solved state at its third step: the microwave opened, or the ant on the goal."""

    def __init__(self, envs):
        super().__init__(envs)
        self.steps = 0

    def step(self, actions):
        self.steps += 1
        if self.steps == 3:
            env = self.env.envs[0].unwrapped
            if hasattr(env, "maze"):  # Ant Maze
                env.data.qpos[:2] = env.goal
            else:  # Franka Kitchen: the microwave door's joint at its goal angle
                env.data.qpos[22] = -0.75
            mujoco.mj_forward(env.model, env.data)
        return self.env.step(actions)


@pytest.mark.parametrize("env", [KITCHEN, ANTMAZE], ids=["kitchen", "antmaze"])
def test_d4rl_metric_on_a_scripted_episode(env, monkeypatch):
    """Env 0 solves a sub-task (reaches the goal) mid-episode, env 1 does not: scores [1, 0], kept to the
    episode's end although the reward of that step is not repeated."""
    import dime_bc

    env_id, kwargs = env
    make_envs = dime_bc.make_envs
    monkeypatch.setattr(dime_bc, "make_envs", lambda *a: Scripted(make_envs(*a)))
    args = dime_bc.Args(alpha=0.5, env_id=env_id, env_kwargs=json.dumps({**kwargs, "max_episode_steps": 6}))
    args.eval_episodes, args.hidden_sizes = 2, (8,)
    torch.manual_seed(0)
    dims = make_envs(env_id, 1, args.env_kwargs)
    agent = dime_bc.Agent(dims.single_observation_space.shape[0], dims.single_action_space.shape[0], args)
    with torch.no_grad():  # a policy mean of zero: the robot holds still
        agent.policy.mean.weight.zero_()
        agent.policy.mean.bias.zero_()
    returns, scores = dime_bc.evaluate(agent, args, step=0)
    np.testing.assert_array_equal(scores, [1.0, 0.0])
    if env_id == "FrankaKitchen-v1":
        np.testing.assert_array_equal(returns, [1.0, 0.0])  # one sub-task, rewarded once


def test_control_suite_evaluation_has_no_d4rl_score(tmp_path):
    import dime_bc

    args = dime_bc.Args(alpha=0.5, env_id="cartpole_swingup", eval_episodes=1, hidden_sizes=(8,))
    agent = dime_bc.Agent(5, 1, args)
    assert dime_bc.d4rl_score({}) is None
    assert dime_bc.evaluate(agent, args, step=0)[1] is None


def test_minari_id_resolves_in_the_minari_datasets_dir(kitchen, tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    os.makedirs(root / "D4RL" / "kitchen")
    os.symlink(kitchen[0], root / "D4RL" / "kitchen" / "complete-v2")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    assert datasets.load_dataset("D4RL/kitchen/complete-v2").env_id == "FrankaKitchen-v1"


@pytest.mark.parametrize(
    "dataset, env_id, message",
    [
        ("D4RL/kitchen/complete-v2", "FrankaKitchen-v1", "minari download D4RL/kitchen/complete-v2"),
        ("kitchen", "cheetah_run", "was recorded on FrankaKitchen-v1; pass --env-id FrankaKitchen-v1"),
        ("kitchen", "NoSuchEnv-v0", "--env-id 'NoSuchEnv-v0' is unknown"),
    ],
)
def test_bad_d4rl_input_is_one_clear_line(dataset, env_id, message, kitchen, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "empty"))
    with pytest.raises(SystemExit) as exit_info:
        run("dime_bc", kitchen[0] if dataset == "kitchen" else dataset, env_id, tmp_path / "runs")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and message in err
    assert not os.path.exists(tmp_path / "runs")


def test_bad_env_kwargs_are_one_clear_line(kitchen, tmp_path, capsys):
    for env_kwargs, message in [
        ("{bad", "do not fit FrankaKitchen-v1"),
        ('{"foo": 1}', "do not fit FrankaKitchen-v1"),
    ]:
        with pytest.raises(SystemExit):
            run("crr_ls", kitchen[0], "FrankaKitchen-v1", tmp_path, env_kwargs=env_kwargs)
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
