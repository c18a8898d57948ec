"""zoo/: every exported policy loads without this project's code, and its manifest figures re-check."""

import json
import math
import os

import numpy as np
import pytest
import torch

import dime_morl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = json.load(open(os.path.join(ROOT, "zoo", "manifest.json")))


@pytest.mark.parametrize("entry", MANIFEST["policies"], ids=lambda e: f"{e['env_id']}/{e['name']}")
def test_zoo_policy_matches_its_manifest(entry):
    path = os.path.join(ROOT, entry["file"])
    assert os.path.getsize(path) == entry["file_bytes"]
    extra = {"meta.json": ""}
    policy = torch.export.load(path, extra_files=extra).module()  # torch only: no project class needed
    assert json.loads(extra["meta.json"])["env_id"] == entry["env_id"]
    episodes = 10
    envs = dime_morl.make_envs(entry["env_id"], episodes)
    obs, _ = envs.reset(seed=list(range(100, 100 + episodes)))  # not the seeds of the training evaluation
    returns, alive = np.zeros(episodes), np.ones(episodes, bool)
    while alive.any():
        with torch.no_grad():
            mean, stddev = policy(torch.as_tensor(obs, dtype=torch.float32))
        obs, reward, terminated, truncated, _ = envs.step(mean.clamp(-1.0, 1.0).numpy())
        returns += reward * alive
        alive &= ~(terminated | truncated)
    assert mean.shape == stddev.shape and (stddev > 0).all()
    # Same policy, fresh initial states: the mean return agrees within sampling error.
    tolerance = (
        3 * max(entry["eval_return_std"], 5.0) / math.sqrt(episodes) + 0.01 * entry["eval_return_mean"]
    )
    assert abs(returns.mean() - entry["eval_return_mean"]) <= tolerance, (returns.mean(), entry)


def test_zoo_policies_are_ordered_by_quality():
    by_env = {}
    for entry in MANIFEST["policies"]:
        by_env.setdefault(entry["env_id"], []).append(entry)
    for entries in by_env.values():
        returns = [e["eval_return_mean"] for e in sorted(entries, key=lambda e: e["env_steps"])]
        assert returns == sorted(returns), returns  # early < middle < late
