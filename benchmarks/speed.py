"""Learner and actor speed of the scripts, measured on synthetic data (nothing is trained).

    python benchmarks/speed.py                       # CPU preset and paper size, on CUDA when present
    python benchmarks/speed.py --presets cpu --steps 50

Prints ms per learner step and learner steps/s per script and preset, and env steps/s of the actors.
"""

import argparse
import importlib
import os
import sys
import time

import torch

os.environ.setdefault("MUJOCO_GL", "disable")  # the actors render nothing
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dime_finetune  # noqa: E402
import dime_morl  # noqa: E402

OFFLINE = ["dime_bc", "dime_awbc", "crr_ls", "dime_multi"]
ONLINE = ["dime_morl", "dime_finetune"]
PRESETS = {  # name: (hidden sizes, batch size)
    "cpu": ((256, 256, 256), 256),
    "paper": ((1024, 1024, 1024, 1024, 1024, 512), 512),
}


def seconds_per_step(step, steps: int, warmup: int, device) -> float:
    """Mean wall time of `step()` over `steps` calls after `warmup` untimed ones (compilation, caches)."""
    for _ in range(warmup):
        stats = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        stats = step()
    stats["loss"].item()  # wait for the device
    return (time.perf_counter() - start) / steps


def online_setup(module, preset, device, num_samples, compile, bf16, obs_dim, act_dim):
    """Args, agent, optimisers and a full replay of random transitions for an online script's learner."""
    hidden, batch = PRESETS[preset]
    args = module.Args(
        env_id="cheetah_run",
        hidden_sizes=hidden,
        batch_size=batch,
        buffer_size=100_000,
        num_samples=num_samples,
        bf16=bf16,
    )
    objectives = (2,) if module is dime_morl else ()  # dime_morl: task and energy objectives
    agent = module.Agent(obs_dim, act_dim, *objectives, args).to(device)
    if compile:
        module.compile_networks(agent)
    replay = module.Replay(args.buffer_size, args.num_envs, obs_dim, act_dim, *objectives, device)
    for v in replay.data.values():
        v.copy_(torch.rand(v.shape) < 0.001 if v.dtype == torch.bool else torch.randn(v.shape))
    replay.full = True
    return args, agent, module.make_optimizers(agent, args), replay


def time_morl_learner(
    preset, device, steps, num_samples=20, compile=False, bf16=False, obs_dim=17, act_dim=6
):
    """Seconds per dime_morl learner step on a full replay of random transitions (cheetah_run sizes)."""
    setup = online_setup(dime_morl, preset, device, num_samples, compile, bf16, obs_dim, act_dim)
    args, agent, optimizers, replay = setup
    atoms = dime_morl.critic_supports(args, act_dim).to(device)
    gen = torch.Generator(device).manual_seed(0)
    step = lambda: dime_morl.learner_step(agent, optimizers, replay, atoms, args, gen)
    return seconds_per_step(step, steps, warmup=10 if compile else 5, device=device)


def time_finetune_learner(
    preset, device, steps, num_samples=20, compile=False, bf16=False, obs_dim=17, act_dim=6
):
    """Seconds per dime_finetune learner step on a full replay of random transitions, with a teacher of the
    same size as the policy (cheetah_run sizes)."""
    setup = online_setup(dime_finetune, preset, device, num_samples, compile, bf16, obs_dim, act_dim)
    args, agent, optimizers, replay = setup
    teacher = dime_finetune.Policy(obs_dim, act_dim, args.hidden_sizes).to(device).eval()
    atoms = torch.linspace(args.v_min, args.v_max, args.num_atoms, device=device)
    gen = torch.Generator(device).manual_seed(0)
    step = lambda: dime_finetune.learner_step(agent, optimizers, replay, teacher, atoms, args, gen)
    return seconds_per_step(step, steps, warmup=10 if compile else 5, device=device)


def time_offline_learner(
    script, preset, device, steps, num_samples=20, compile=False, bf16=False, obs_dim=17, act_dim=6
):
    """Seconds per learner step of an offline script on 100k random n-step tuples (cheetah_run sizes)."""
    module = importlib.import_module(script)
    hidden, batch = PRESETS[preset]
    tradeoff = {} if script == "dime_multi" else {"alpha": 0.5}  # dime_multi draws α per sample
    args = module.Args(**tradeoff, hidden_sizes=hidden, batch_size=batch, num_samples=num_samples, bf16=bf16)
    agent = module.Agent(obs_dim, act_dim, args).to(device)
    if compile:
        module.compile_networks(agent)
    optimizers = module.make_optimizers(agent, args)
    size, gen = 100_000, torch.Generator(device).manual_seed(0)
    data = {"observations": torch.randn(size, obs_dim), "next_observations": torch.randn(size, obs_dim)}
    data.update(actions=torch.rand(size, act_dim) * 2 - 1, next_actions=torch.rand(size, act_dim) * 2 - 1)
    data.update(returns=torch.rand(size) * 5, discounts=torch.full((size,), 0.99**5))
    data["next_action_valid"] = torch.rand(size) > 0.005
    data = {k: v.to(device) for k, v in data.items()}
    atoms = torch.linspace(args.v_min, args.v_max, args.num_atoms, device=device)
    step = lambda: module.learner_step(agent, optimizers, data, atoms, args, gen)
    return seconds_per_step(step, steps, warmup=10 if compile else 5, device=device)


def time_actors(env_id: str, num_envs: int, steps: int, policy: bool = False, bf16: bool = False) -> float:
    """Environment steps per second of the vector env: random actions (physics only), or with `policy` a
    CPU-preset policy sampling the actions as dime_morl's actors do (inference in bfloat16 with `bf16`)."""
    envs = dime_morl.make_envs(env_id, num_envs)
    obs, _ = envs.reset(seed=[0] * num_envs)
    hidden = PRESETS["cpu"][0]
    net = dime_morl.Policy(envs.single_observation_space.shape[0], envs.single_action_space.shape[0], hidden)
    start = time.perf_counter()
    for _ in range(steps):
        if policy:
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                mean, stddev = net(torch.as_tensor(obs, dtype=torch.float32))
                actions = (mean + stddev * torch.randn(mean.shape)).clamp(-1.0, 1.0).numpy()
        else:
            actions = envs.action_space.sample()
        obs = envs.step(actions)[0]
    return steps * num_envs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--steps", type=int, default=30, help="timed learner steps per measurement")
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU even when CUDA is present")
    parser.add_argument("--scripts", nargs="+", default=[*ONLINE, *OFFLINE], choices=[*ONLINE, *OFFLINE])
    opts = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not opts.cpu else "cpu")
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"device: {device} ({where}, torch {torch.__version__}, {torch.get_num_threads()} threads)")
    head = f"{'script':<14}{'preset':<7}{'hidden':<30}{'batch':>6}{'N':>4}  {'mode':<13}"
    print(f"{head}{'ms/step':>9}{'steps/s':>9}")
    for script in opts.scripts:
        for preset in opts.presets:
            steps = opts.steps if preset == "cpu" or device.type == "cuda" else max(opts.steps // 10, 3)
            variants = [(20, False, False), (20, True, False), (4, False, False)]
            variants += [(20, False, True), (20, True, True)]  # --bf16
            for num_samples, compile, bf16 in variants if preset == "cpu" else variants[:1]:
                if script in ONLINE:
                    timer = time_morl_learner if script == "dime_morl" else time_finetune_learner
                    sec = timer(preset, device, steps, num_samples, compile, bf16)
                else:
                    sec = time_offline_learner(script, preset, device, steps, num_samples, compile, bf16)
                hidden, batch = PRESETS[preset]
                mode = ("compile " if compile else "") + ("bf16" if bf16 else "") or "eager"
                row = f"{script:<14}{preset:<7}{str(hidden):<30}{batch:>6}{num_samples:>4}  {mode:<13}"
                print(f"{row}{sec * 1e3:>9.1f}{1 / sec:>9.1f}", flush=True)
    actors = {"random actions": (False, False), "policy fp32": (True, False), "policy bf16": (True, True)}
    for what, (policy, bf16) in actors.items():
        rate = time_actors("cheetah_run", 4, 500, policy, bf16)
        print(f"actors: cheetah_run, 4 envs, {what}: {rate:.0f} env steps/s")


if __name__ == "__main__":
    main()
