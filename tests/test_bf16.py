"""--bf16 in every script: one learner step on a fixed batch gives the fp32 losses and gradients within
bfloat16's precision, and bfloat16 really ran.

Tolerances: bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 ≈ 2e-3 per product); over 2-3 layers
of 64 units the losses stay within 2 % of fp32 and each network's gradient within 5 % of the fp32 gradient
in norm (cosine ≥ 0.99). Weights, optimiser states, losses, the softmax and the C51 projection stay fp32.
"""

import copy
import dataclasses
import importlib
import math

import pytest
import torch
import torch.nn as nn

OFFLINE = ["dime_bc", "dime_awbc", "crr_ls", "dime_multi"]
SMALL = dict(hidden_sizes=(64, 64), batch_size=32, num_samples=8, v_min=-10.0, v_max=10.0)


def offline_setup(script: str, module=None):
    module = module or importlib.import_module(script)
    args = module.Args(**({} if script == "dime_multi" else {"alpha": 0.5}), **SMALL)
    size, obs_dim = 200, 3 + (script == "dime_multi")  # dime_multi's networks also take α
    g = torch.Generator().manual_seed(0)
    data = {
        "observations": torch.randn(size, 3, generator=g),
        "next_observations": torch.randn(size, 3, generator=g),
    }
    data.update(
        actions=torch.rand(size, 2, generator=g) * 2 - 1, next_actions=torch.rand(size, 2, generator=g)
    )
    data.update(returns=torch.rand(size, generator=g) * 3, discounts=torch.full((size,), 0.95))
    data["next_action_valid"] = torch.ones(size, dtype=torch.bool)
    agent = module.Agent(obs_dim - (script == "dime_multi"), 2, args)
    atoms = torch.linspace(args.v_min, args.v_max, args.num_atoms)
    step = lambda agent, opts, args, gen: module.learner_step(agent, opts, data, atoms, args, gen)
    return module, args, agent, step


def online_setup(script: str, module=None):
    module = module or importlib.import_module(script)
    args = module.Args(env_id="cartpole_swingup", alpha=0.5, **SMALL)
    g = torch.Generator().manual_seed(0)
    if script == "dime_morl":
        replay = module.Replay(256, 1, 3, 2, 2, torch.device("cpu"))
        agent, atoms = module.Agent(3, 2, 2, args), module.critic_supports(args, 2)
        rewards = lambda: torch.rand(1, 2, generator=g)
    else:
        replay = module.Replay(256, 1, 3, 2, "cpu")
        agent, atoms = module.Agent(3, 2, args), torch.linspace(args.v_min, args.v_max, args.num_atoms)
        rewards = lambda: torch.rand(1, generator=g)
    for _ in range(256):
        obs = torch.randn(1, 3, generator=g)
        replay.add(
            obs=obs,
            actions=torch.rand(1, 2, generator=g) * 2 - 1,
            rewards=rewards(),
            next_obs=obs + 0.1,
            terminals=torch.zeros(1, dtype=torch.bool),
            ends=torch.zeros(1, dtype=torch.bool),
        )
    if script == "dime_morl":
        step = lambda agent, opts, args, gen: module.learner_step(agent, opts, replay, atoms, args, gen)
    else:
        teacher = copy.deepcopy(agent.policy).eval()
        step = lambda agent, opts, args, gen: module.learner_step(
            agent, opts, replay, teacher, atoms, args, gen
        )
    return module, args, agent, step


def gradients(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])


@pytest.mark.parametrize("script", [*OFFLINE, "dime_finetune", "dime_morl"])
def test_bf16_learner_step_matches_fp32(script):
    torch.manual_seed(0)
    module, args, agent, step = (online_setup if script in ("dime_morl", "dime_finetune") else offline_setup)(
        script
    )
    stats, grads = {}, {}
    for bf16 in (False, True):
        run_args, run_agent = dataclasses.replace(args, bf16=bf16), copy.deepcopy(agent)
        stats[bf16] = step(
            run_agent, module.make_optimizers(run_agent, run_args), run_args, torch.Generator().manual_seed(1)
        )
        grads[bf16] = {name: gradients(getattr(run_agent, name)) for name in ("policy", "critic")}
        for p in run_agent.parameters():
            assert p.dtype == torch.float32  # master weights stay fp32
    for key in ("losses/critic_loss", "losses/policy_loss", "losses/q_mean"):
        assert stats[True][key].dtype == torch.float32
        torch.testing.assert_close(stats[True][key], stats[False][key], rtol=2e-2, atol=2e-2)
    for name in ("policy", "critic"):
        g32, g16 = grads[False][name], grads[True][name]
        assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99, name
        assert (g16.norm() - g32.norm()).abs() < 0.05 * g32.norm(), name
        assert not torch.equal(g16, g32), f"{name}: bfloat16 did not run"  # the passes really were bf16


@pytest.mark.parametrize("script", [*OFFLINE, "dime_finetune", "dime_morl"])
def test_bf16_without_hardware_support(script, monkeypatch, capsys):
    """A GPU without bfloat16 is refused in one line; a CPU without native bfloat16 trains in fp32 (the
    args the run records say so) with a one-line notice; a CPU with it keeps --bf16 silently."""
    module = importlib.import_module(script)

    def check(device_type: str):  # the script's device check under --bf16, on a GPU or a CPU
        monkeypatch.setattr(torch.cuda, "is_available", lambda: device_type == "cuda")
        return module.check_device(module.Args(bf16=True, hidden_sizes=(8,)))[1]

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(SystemExit) as exit_info:
        check("cuda")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--bf16" in err[0] and "drop --bf16" in err[0]
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # a CPU with avx512_bf16
    assert check("cpu").bf16 and "bfloat16" not in capsys.readouterr().out
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)  # an AVX2 laptop: fp32 instead
    assert not check("cpu").bf16
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "bfloat16" in x]
    assert "no native bfloat16" in line and "--bf16 off" in line


@pytest.mark.parametrize("script", [*OFFLINE, "dime_finetune", "dime_morl"])
def test_bf16_heads_keep_the_trust_region_and_q_at_fp32_precision(script):
    """The M-step's KLs between an online policy that drifted 1e-5 from its target, at a small stddev (0.02),
    and the critic's Q: under --bf16 they agree with fp32 far below the bounds and the advantages they are
    compared with, because the heads run in fp32. Rounding the heads' outputs to bfloat16 instead gives
    KL_μ ~6e-4 and KL_σ ~8e-7 of noise here, above ε_μ/10 and ε_σ/10 (dime_morl's ε_σ is 1e-7)."""
    module = importlib.import_module(script)
    torch.manual_seed(0)
    hidden = (256, 256, 256)
    target = module.Policy(17, 6, hidden)
    with torch.no_grad():  # a trained-looking policy: means spread over [-0.5, 0.5], stddev ≈ 0.02
        target.mean.weight.normal_(0.0, 0.5 / 16)
        target.mean.bias.uniform_(-0.5, 0.5)
        target.stddev.weight.normal_(0.0, 0.05 / 16)
        target.stddev.bias.fill_(math.log(math.expm1(0.02 * math.log(2.0) / 0.7)))  # softplus⁻¹
    online = copy.deepcopy(target)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p) * 1e-5)
    obs, actions = torch.randn(512, 17), torch.rand(512, 6) * 2 - 1
    critic = module.Critic(23, 1, 101, hidden) if script == "dime_morl" else module.Critic(23, 101, hidden)
    with torch.no_grad():
        critic.head.weight.normal_(0.0, 1.0 / 16)  # logits of unit spread
    atoms = torch.linspace(-150.0, 150.0, 101)

    def kls_and_q(bf16: bool):
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            (tm, ts), (m, s) = target(obs), online(obs)
            q = (critic(obs, actions).reshape(512, 101).softmax(-1) * atoms).sum(-1)
        assert tm.dtype == s.dtype == q.dtype == torch.float32
        return module.gaussian_kl(tm, ts, m, ts).mean(), module.gaussian_kl(tm, ts, tm, s).mean(), q

    (kl_mean, kl_stddev, q), (kl_mean16, kl_stddev16, q16) = kls_and_q(False), kls_and_q(True)
    args = module.Args()
    epsilon_mean = args.epsilon_mean or 0.0025  # dime_morl's ε_μ defaults per task
    assert (kl_mean16 - kl_mean).abs() < epsilon_mean / 10
    assert (kl_stddev16 - kl_stddev).abs() < args.epsilon_stddev / 10
    assert (q16 - q).abs().max() < 0.1 and (q16 - q).std() < 0.02  # advantages: std ~0.5 on the zoo data
