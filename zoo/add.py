"""Add policies from a `dime_morl.py --save-model` run to the zoo, with measured returns in zoo/manifest.json.

    python zoo/add.py --run-dir runs/cheetah_run__zoo__1__123 --log cheetah_run.log --commit <sha> \
        --pick early=5375 middle=35375 late=45375

Copies `<run-dir>/policies/step_<N>.pt2` to `zoo/<env_id>/<name>.pt2`, evaluates each policy's mean action
(clipped to [-1, 1]) on 10 episodes with reset seeds 0..9, and writes the manifest entry: the training
command rebuilt from the run's args.json (flags that differ from dime_morl.py's defaults), the commit,
learner and env steps (from the run's log), return mean ± std and file size. tests/test_zoo.py re-checks
the figures on other seeds.
"""

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common.datasets import make_env  # noqa: E402

MANIFEST = os.path.join(ROOT, "zoo", "manifest.json")
EVAL_SEEDS = list(range(10))
ABOUT = (
    "Exported policies (torch.export; load with torch.export.load(file).module(), which maps observations "
    "[B, S] to (mean, stddev) [B, D]) trained with the project's own learner and added by zoo/add.py; "
    "eval_return_* are the policy mean (clipped to [-1, 1]) over 10 episodes with reset seeds 0..9."
)


def evaluate(path: str, env_id: str, seeds: list[int]) -> np.ndarray:
    """Per-episode returns of the policy mean, all episodes stepped in lockstep."""
    policy = torch.export.load(path).module()
    envs = [make_env(env_id)[0] for _ in seeds]
    obs = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds)])
    returns, alive = np.zeros(len(seeds)), np.ones(len(seeds), bool)
    while alive.any():
        with torch.no_grad():
            actions = policy(torch.as_tensor(obs, dtype=torch.float32))[0].clamp(-1.0, 1.0).numpy()
        for i in np.flatnonzero(alive):
            obs[i], reward, terminated, truncated, _ = envs[i].step(actions[i])
            returns[i] += reward
            alive[i] = not (terminated or truncated)
    return returns


def training_command(args: dict) -> str:
    """The dime_morl.py command line that reproduces `args` (only flags that differ from the defaults)."""
    import dime_morl

    flags = []
    for f in dataclasses.fields(dime_morl.Args):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = args[f.name]
        if value == (list(default) if isinstance(default, tuple) else default) or f.name in (
            "resume",
            "output_dir",
        ):
            continue
        name = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(name if value else "--no-" + f.name.replace("_", "-"))
        elif isinstance(value, list):
            flags.append(f"{name} {' '.join(str(v) for v in value)}")
        else:
            flags.append(f"{name} {value}")
    return "python dime_morl.py " + " ".join(flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--log", required=True, help="the run's stdout (eval lines 'step N (env steps M)')")
    parser.add_argument("--commit", required=True, help="commit of dime_morl.py that trained the run")
    parser.add_argument("--pick", nargs="+", required=True, help="name=learner_step, worst to best")
    opts = parser.parse_args()
    args = json.load(open(os.path.join(opts.run_dir, "args.json")))
    env_steps = {
        int(s): int(e) for s, e in re.findall(r"step (\d+) \(env steps (\d+)\)", open(opts.log).read())
    }
    manifest = json.load(open(MANIFEST)) if os.path.exists(MANIFEST) else {"policies": []}
    for pick in opts.pick:
        name, step = pick.split("=")
        source = os.path.join(opts.run_dir, "policies", f"step_{step}.pt2")
        target = os.path.join("zoo", args["env_id"], f"{name}.pt2")
        os.makedirs(os.path.join(ROOT, os.path.dirname(target)), exist_ok=True)
        shutil.copyfile(source, os.path.join(ROOT, target))
        returns = evaluate(os.path.join(ROOT, target), args["env_id"], EVAL_SEEDS)
        entry = {
            "env_id": args["env_id"],
            "name": name,
            "file": target,
            "file_bytes": os.path.getsize(os.path.join(ROOT, target)),
            "script": "dime_morl.py",
            "commit": opts.commit,
            "command": training_command(args),
            "learner_steps": int(step),
            "env_steps": env_steps[int(step)],
            "eval_episodes": len(returns),
            "eval_return_mean": round(float(returns.mean()), 2),
            "eval_return_std": round(float(returns.std()), 2),
        }
        print(json.dumps(entry))
        manifest["policies"] = [
            e for e in manifest["policies"] if (e["env_id"], e["name"]) != (entry["env_id"], name)
        ] + [entry]
    manifest["about"] = ABOUT
    manifest["policies"].sort(key=lambda e: (e["env_id"], e["env_steps"]))
    with open(MANIFEST, "w") as f:
        json.dump({"about": manifest["about"], "policies": manifest["policies"]}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
