"""The algorithm block of every script (sections 1-8, above the banner) stands alone: copied into an empty
module it defines everything a learner step needs, and one step on a synthetic batch runs and changes the
networks. The harness below the banner (training loop, evaluation, checkpoints) is not needed for that."""

import copy
import os
import types

import pytest
import torch

from tests.test_bf16 import OFFLINE, offline_setup, online_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BANNER = "# The algorithm ends here"


def algorithm_block(script: str) -> types.ModuleType:
    """A new module holding only the lines of `script`.py above its banner."""
    source = open(os.path.join(ROOT, f"{script}.py")).read()
    assert source.count(BANNER) == 1, f"{script}.py: one banner line"
    block = source[: source.index(BANNER)]
    module = types.ModuleType(f"{script}_algorithm_block")
    module.__file__ = os.path.join(ROOT, f"copied_{script}.py")  # the block may live in any file
    exec(compile(block, module.__file__, "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("script", [*OFFLINE, "dime_finetune", "dime_morl"])
def test_the_algorithm_block_runs_a_learner_step_alone(script):
    module = algorithm_block(script)
    assert not hasattr(module, "main") and not hasattr(module, "save_checkpoint")  # the harness stayed behind
    setup = online_setup if script in ("dime_finetune", "dime_morl") else offline_setup
    torch.manual_seed(0)
    module, args, agent, step = setup(script, module)
    before = copy.deepcopy(agent.state_dict())
    stats = step(agent, module.make_optimizers(agent, args), args, torch.Generator().manual_seed(1))
    assert all(torch.isfinite(v).all() for v in stats.values())
    for name in ("policy", "critic"):
        changed = [
            not torch.equal(p, before[f"{name}.{k}"]) for k, p in getattr(agent, name).state_dict().items()
        ]
        assert any(changed), f"{script}: one learner step left the {name} unchanged"
