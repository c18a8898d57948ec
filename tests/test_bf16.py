"""--bf16 in every script: one learner step on a fixed batch gives the fp32 losses and gradients within
bfloat16's precision, and bfloat16 really ran.

Tolerances: bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 ≈ 2e-3 per product); over 2-3 layers
of 64 units the losses stay within 2 % of fp32 and each network's gradient within 5 % of the fp32 gradient
in norm (cosine ≥ 0.99). Weights, optimiser states, losses, the softmax and the C51 projection stay fp32.

The output layers run in fp32 under --bf16: each keeps the quantity it feeds (KL_μ, KL_σ, the advantages)
within a bound tied to ε_μ, ε_σ or the advantages' spread, and the same layer in bfloat16 misses that bound
more than tenfold (one test per head).
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
    """A GPU without native bfloat16, like a CPU without it, trains in fp32 (the args the run records say so)
    with a one-line notice (tests/test_device_and_signals.py: a GPU that only emulates it); a CPU with
    native bfloat16 keeps --bf16 silently."""
    module = importlib.import_module(script)

    def check(device_type: str):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: device_type == "cuda")
        return module.check_device(module.Args(bf16=True, hidden_sizes=(8,)))[1]

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert not check("cuda").bf16
    assert "no native bfloat16 matmuls on this CUDA" in capsys.readouterr().out
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # a CPU with avx512_bf16
    assert check("cpu").bf16 and "bfloat16" not in capsys.readouterr().out
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)  # an AVX2 laptop: fp32 instead
    assert not check("cpu").bf16
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "bfloat16" in x]
    assert "no native bfloat16" in line and "--bf16 off" in line


SCRIPTS = [*OFFLINE, "dime_finetune", "dime_morl"]
HIDDEN = (256, 256, 256)


def bf16_heads(monkeypatch, module, *layers: nn.Linear) -> None:
    """The module's `layers` computed as plain layers under autocast, in bfloat16 as before the fp32 heads;
    every other output layer still through the module's fp32_linear."""
    fp32_linear = module.fp32_linear

    def linear(layer: nn.Linear, h: torch.Tensor) -> torch.Tensor:
        if any(layer is x for x in layers):
            return layer(h)
        return fp32_linear(layer, h)

    monkeypatch.setattr(module, "fp32_linear", linear)


def drifted_policies(module, args) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """A sharp target policy and an online policy one full M-step away, with 512 observations.

    Target: means of magnitude 0.5-0.9 (bfloat16 spacing 2^-8 there), stddev 0.0025-0.01 over the six
    action dimensions (pre-softplus values -6 to -4.6, bfloat16 spacing 2^-5). Online: every weight drifted
    by 1e-5, and the heads' weights by random steps scaled to KL_μ ≈ ε_μ and KL_σ ≈ ε_σ (the script's
    default bounds).
    """
    torch.manual_seed(0)
    target = module.Policy(17, 6, HIDDEN)
    stddev = torch.logspace(math.log10(0.0025), math.log10(0.01), 6)
    with torch.no_grad():
        target.mean.weight.normal_(0.0, 0.05 / 16)
        target.mean.bias.uniform_(0.5, 0.9).mul_(torch.randn(6).sign())
        target.stddev.weight.normal_(0.0, 0.05 / 16)
        # softplus⁻¹ of the stddev before the head's scale POLICY_INIT_SCALE / softplus(0)
        target.stddev.bias.copy_(torch.expm1(stddev * math.log(2.0) / module.POLICY_INIT_SCALE).log())
    online = copy.deepcopy(target)
    obs = torch.randn(512, 17)
    with torch.no_grad():
        # A random head step dW moves an output by dW·h: variance scale² · E|h|² per output.
        features = target.torso(obs).pow(2).sum(-1).mean()
        for p in online.parameters():
            p.add_(torch.randn_like(p) * 1e-5)
        # KL_μ = Δμ² / 2σ² per dimension; KL_σ ≈ (Δ log σ)², and Δ log σ ≈ Δ(pre-softplus) here.
        mean_scale = stddev[:, None] * (2 * args.epsilon_mean / features).sqrt()
        online.mean.weight.add_(torch.randn_like(online.mean.weight) * mean_scale)
        stddev_scale = (args.epsilon_stddev / features).sqrt()
        online.stddev.weight.add_(torch.randn_like(online.stddev.weight) * stddev_scale)
    return target, online, obs


def policy_kls(module, target, online, obs, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The M-step's KL_μ and KL_σ from target to online (each with the target's other parameter), mean over
    states and action dimensions: the policies run under bfloat16 autocast if `bf16`, the KLs in fp32."""
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        target_mean, target_stddev = target(obs)
        mean, stddev = online(obs)
    target_mean, target_stddev, mean, stddev = (x.float() for x in (target_mean, target_stddev, mean, stddev))
    kl_mean = module.gaussian_kl(target_mean, target_stddev, mean, target_stddev).mean()
    kl_stddev = module.gaussian_kl(target_mean, target_stddev, target_mean, stddev).mean()
    return kl_mean, kl_stddev


def kl_errors(script: str, head: str, monkeypatch) -> tuple[float, float, float]:
    """|KL under --bf16 - KL in fp32| of the KL that `head` ("mean" or "stddev") feeds, with the scripts'
    heads and with that head in bfloat16, and the bound ε/10 of that KL."""
    module = importlib.import_module(script)
    args = module.Args()
    target, online, obs = drifted_policies(module, args)
    index = ("mean", "stddev").index(head)
    exact = policy_kls(module, target, online, obs, bf16=False)[index]
    fp32_heads = policy_kls(module, target, online, obs, bf16=True)[index]
    with monkeypatch.context() as patch:
        bf16_heads(patch, module, getattr(target, head), getattr(online, head))
        bf16_head = policy_kls(module, target, online, obs, bf16=True)[index]
    bound = (args.epsilon_mean, args.epsilon_stddev)[index] / 10
    return (fp32_heads - exact).abs().item(), (bf16_head - exact).abs().item(), bound


@pytest.mark.parametrize("script", SCRIPTS)
def test_bf16_mean_head_keeps_kl_mean_within_a_tenth_of_epsilon_mean(script, monkeypatch):
    """KL_μ between a sharp target policy and an online one at KL_μ ≈ ε_μ (`drifted_policies`): under --bf16
    it stays within ε_μ/10 of fp32, so the trust region's dual compares KL_μ with ε_μ to 10 %, because the
    mean head runs in fp32. The mean head in bfloat16 rounds the means to steps of 0.004, more than the
    M-step moves them (σ√(2ε_μ): 0.0002-0.0014): KL_μ then misses fp32 by more than ε_μ, 10× the bound."""
    fp32_heads, bf16_head, bound = kl_errors(script, "mean", monkeypatch)
    assert bf16_head > 10 * bound
    assert fp32_heads < bound


@pytest.mark.parametrize("script", SCRIPTS)
def test_bf16_stddev_head_keeps_kl_stddev_within_a_tenth_of_epsilon_stddev(script, monkeypatch):
    """KL_σ between a sharp target policy and an online one at KL_σ ≈ ε_σ (`drifted_policies`): under
    --bf16 it stays within ε_σ/10 of fp32 because the stddev head runs in fp32. The stddev head in bfloat16
    rounds its pre-softplus output (-6 to -4.6) to steps of 2^-5, a 3 % change of σ against the M-step's
    √ε_σ (0.3 %, dime_morl 0.03 %): KL_σ then misses fp32 by more than ε_σ, 10× the bound."""
    fp32_heads, bf16_head, bound = kl_errors(script, "stddev", monkeypatch)
    assert bf16_head > 10 * bound
    assert fp32_heads < bound


def advantages(module, critic, obs, actions, bf16: bool) -> torch.Tensor:
    """A(s, a_j) = Q(s, a_j) - mean_j Q(s, a_j) over the sampled actions [N, B]: the critic under bfloat16
    autocast if `bf16`, the softmax and Q in fp32 (as in the scripts)."""
    atoms = torch.linspace(-150.0, 150.0, 101)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        logits = critic(obs, actions)
    q = (logits.float().reshape(*actions.shape[:2], 101).softmax(-1) * atoms).sum(-1)  # [N, B]
    return q - q.mean(0)


def offset_critic(module, script: str) -> nn.Module:
    """A critic whose logits sit around +16 with a spread of 0.5: softmax ignores a common offset of the
    logits, so training does not hold them near 0."""
    torch.manual_seed(0)
    if script == "dime_morl":
        critic = module.Critic(23, 1, 101, HIDDEN)
    else:
        critic = module.Critic(23, 101, HIDDEN)
    with torch.no_grad():
        critic.head.weight.normal_(0.0, 0.5 / 16)
        critic.head.bias.normal_(16.0, 1.0)
    return critic


@pytest.mark.parametrize("script", SCRIPTS)
def test_bf16_critic_head_keeps_the_advantages_within_a_twentieth_of_their_spread(script, monkeypatch):
    """The E-step weighs a state's sampled actions by exp(A/η), with η of the order of the advantages'
    spread. Under --bf16 the advantages of 8 actions in each of 64 states stay within 1/20 of their std of
    fp32 (rms), because the critic head runs in fp32; the bfloat16 torso alone costs about 1/65.
    The critic head in bfloat16 rounds the logits (`offset_critic`: about +16) to steps of 0.06-0.125, and
    the advantages then miss fp32 by more than half their std, 10× the bound."""
    module = importlib.import_module(script)
    critic = offset_critic(module, script)
    obs = torch.randn(64, 17)
    actions = torch.rand(8, 64, 6) * 2 - 1
    exact = advantages(module, critic, obs, actions, bf16=False)
    bound = exact.std() / 20
    fp32_head = advantages(module, critic, obs, actions, bf16=True)
    with monkeypatch.context() as patch:
        bf16_heads(patch, module, critic.head)
        bf16_head = advantages(module, critic, obs, actions, bf16=True)
    assert (bf16_head - exact).pow(2).mean().sqrt() > 10 * bound
    assert (fp32_head - exact).pow(2).mean().sqrt() < bound
