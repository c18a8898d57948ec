"""--bf16 in every script: one learner step on a fixed batch gives the fp32 losses and gradients within
bfloat16's precision, and bfloat16 really ran.

Tolerances: bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 ≈ 2e-3 per product); over 2-3 layers
of 64 units the losses stay within 2 % of fp32 and each network's gradient within 5 % of the fp32 gradient
in norm (cosine ≥ 0.99). Weights, optimiser states, losses, the softmax and the C51 projection stay fp32.
"""

import copy
import dataclasses
import importlib

import pytest
import torch
import torch.nn as nn

OFFLINE = ["dime_bc", "dime_awbc", "crr_ls", "dime_multi"]
SMALL = dict(hidden_sizes=(64, 64), batch_size=32, num_samples=8, v_min=-10.0, v_max=10.0)


def offline_setup(script: str):
    module = importlib.import_module(script)
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


def online_setup(script: str):
    module = importlib.import_module(script)
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
    """A GPU without bfloat16 is refused in one line; a CPU without native bfloat16 gets a notice."""
    module = importlib.import_module(script)

    def check(device_type: str) -> None:  # the script's device check under --bf16, on a GPU or a CPU
        monkeypatch.setattr(torch.cuda, "is_available", lambda: device_type == "cuda")
        module.check_device(module.Args(bf16=True, hidden_sizes=(8,)))

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(SystemExit) as exit_info:
        check("cuda")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--bf16" in err[0] and "drop --bf16" in err[0]
    check("cpu")  # this machine's CPU: native or not, never an error
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    check("cpu")
    assert "no native bfloat16" in capsys.readouterr().out
