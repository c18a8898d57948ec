# docs and experiment results: docs/dime_morl.md
"""Online multi-objective MPO: DiME, linear scalarization (LS) and MO-MPO (paper Sec. 3, 4, 6.1; App. A-D.1).

Policy iteration: one C51 critic head per objective evaluates π_i; a non-parametric E-step per objective,
q_k ∝ π_i exp(Q_k/η_k) (eq. 38) with a learned temperature (dual, eq. 45), then a supervised M-step:
    dime   minimise Σ_k α_k KL(q_k ‖ π_θ)  (eq. 3, 51), one ε for every k
    ls     one q ∝ π_i exp(Σ_k α_k Q_k / η)  (Table 1), one temperature
    mompo  minimise Σ_k KL(q_k ‖ π_θ) with ε_k = α_k·ε  (MO-MPO, the comparison of Fig. 4b)
--env-id: `schaffer`, `fonseca_fleming` are one-step bandits, a ∈ R, rewards -f(a) (App. D.1.1): the exact
reward is Q_k, so there is no critic, actor or replay. `<domain>_<task>` is any control-suite task (shimmy)
with objectives [task reward, -‖clip(a)‖₂·cost_scale] (App. D.1.2).

Decisions the paper leaves open (docs/dime_morl.md, "Implementation details"):
- Trade-off vector: bandits use (1-α, α) for every method; control tasks (1, α) for single-α dime and
  mompo (Table 4: α_task = 1, α_cost swept), (1-α, α) for ls and for --multi (Fig. 5: α_task = 1 - α_cost).
- As in Acme's DMPO learner, the E-step/M-step run on the bootstrap states s_{t+n} and reuse the N target-
  policy actions and the one target-critic pass of the C51 target: half the cost of a learner step.
- One critic torso, one categorical head per objective on its own support: task [v_min, v_max], cost
  [-√D·cost_scale/(1-γ), 0] unless --cost-v-min: scaling the cost scales its support (scale invariance).
- Actors: a vector env stepped in lockstep, reset together with seeds from (seed, round) ("rounds" of 1000
  steps; one actor's end cuts the others, a truncation); evaluations fall between rounds. A stop mid-round
  keeps its trade-offs and actions: --resume re-executes them (deterministic envs). Bandits have no rounds.
- `--multi` conditions policy and critic on the trade-off vector: actors draw α ~ U(--alpha-range) per
  episode, the learner relabels every sampled transition with a fresh α (App. A).
- The cost uses the executed (clipped) action; `--save-replay` stores the task reward.
Shape letters: B batch, N sampled actions per state, D action dims, K objectives, I atoms, E actors.
"""

import contextlib
import ctypes
import dataclasses
import functools
import json
import math
import os
import pathlib
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from tqdm import tqdm

from common.c51 import categorical_l2_project

# Names the results, checkpoints and exports.
SCRIPT = os.path.basename(__file__)[: -len(".py")]
# The control suite's time limit: every episode lasts this long.
CONTROL_EPISODE_STEPS = 1000
# Acme's: the ε added to every softplus dual, the duals' lower clamp (_MIN_LOG_TEMPERATURE), and the
# Gaussian head's stddev at initialisation and its floor.
MPO_FLOAT_EPSILON = 1e-8
MIN_LOG_DUAL = -18.0
POLICY_INIT_SCALE = 0.7
POLICY_MIN_SCALE = 1e-6
# KL bound of the optional out-of-bounds action objective (Acme).
EPSILON_PENALTY = 1e-3
BANDITS = ("schaffer", "fonseca_fleming")
# The defaults that differ by environment (docs/dime_morl.md, "Implementation details"). A bandit's 2000
# learner steps reach the front only with a looser, faster-moving trust region (measured).
ENV_DEFAULTS = {
    "control": dict(
        hidden_sizes=(1024,) * 5 + (512,), batch_size=512, epsilon_mean=1e-3, target_update_period=200
    ),
    "bandit": dict(hidden_sizes=(64, 64), batch_size=16, epsilon_mean=0.01, target_update_period=10),
}
# --capture-video keeps every 4th frame of the first evaluation episode.
VIDEO_FRAME_SKIP = 4
# Flags a --resume may change.
RESUME_OVERRIDES = set(
    "total_steps total_env_steps checkpoint_every eval_every resume cuda track save_model "
    "save_replay capture_video log_every compile bf16".split()
)
AT_LEAST = dict(batch_size=1, num_samples=1, n_step=1, num_envs=1, num_atoms=2, eval_episodes=1)


# ==== 1. Args ===========================================================================================
@dataclass
class Args:
    exp_name: str = SCRIPT
    """the name of this experiment (part of the run directory name)"""
    seed: int = 1
    """seed of python, numpy, torch and the environments"""
    torch_deterministic: bool = True
    """sets `torch.backends.cudnn.deterministic`"""
    cuda: bool = True
    """use CUDA when available (falls back to CPU with a notice)"""
    output_dir: str = "runs"
    """runs are written to <output-dir>/<env_id>__<exp_name>__<seed>__<unix_time>/"""
    track: bool = False
    """log to Weights & Biases (imported only then; synced with TensorBoard)"""
    wandb_project_name: str = "dime-rl"
    """the wandb project name"""
    capture_video: bool = False
    """save the first episode of every evaluation as a GIF under <run>/videos (needs EGL rendering)"""
    save_model: bool = False
    """export the policy (torch.export) to <run>/policy.pt2 and, at evaluations, <run>/policies/step_N.pt2"""
    checkpoint_every: int | None = None
    """write <run>/checkpoint.pt every this many learner steps (at the next round boundary; default: at every
    evaluation); 0 = never"""
    resume: str | None = None
    """a checkpoint.pt to continue exactly (same run directory and flags; --total-* may grow)"""
    save_replay: str | None = None
    """at the end, write the replay as an HDF5 dataset in the project's format to this new file"""
    log_every: int = 100
    """log losses every this many learner steps (the learner's only device->host copy)"""
    compile: bool = False
    """torch.compile the networks (CPU: ~25% faster learner steps after ~15 s of compilation)"""
    bf16: bool = False
    """bfloat16 torsos (heads, weights, losses in fp32): ~2x faster on GPUs and CPUs with avx512_bf16 or AMX;
    ignored with a notice on other CPUs, where fp32 is faster"""

    # Algorithm specific arguments

    env_id: str = "fonseca_fleming"
    """schaffer | fonseca_fleming | a control-suite task <domain>_<task> (e.g. cartpole_swingup)"""
    method: Literal["dime", "ls", "mompo"] = "dime"
    """how objectives are combined: DiME (eq. 3), linear scalarization (Table 1) or MO-MPO"""
    alpha: float = 0.5
    """trade-off α ≥ 0: cost weight (dime), in [0, 1] for ls and bandits, cost KL-bound scale (mompo)"""
    multi: bool = False
    """train one trade-off-conditioned policy for α ~ U(--alpha-range) (Sec. 4 eq. 4, App. A)"""
    alpha_range: tuple[float, float] = (0.0, 1.0)
    """range of the trade-off sampled per episode and per transition with --multi"""
    eval_alphas: list[float] | None = None
    """trade-offs at which a --multi policy is evaluated (default: 5 values spanning --alpha-range)"""
    cost_scale: float = 1.0
    """control tasks: the energy cost is -‖clip(a)‖₂ times this (App. D.1.2 compares 1 and 10)"""
    total_env_steps: int = 1_000_000
    """control tasks: environment steps (summed over actors) to train for"""
    total_steps: int = 2_000
    """bandits: learner steps to train for"""
    num_envs: int = 4
    """number of actors (Table 3: 4)"""
    replay_ratio: float = 0.25
    """learner steps per environment step"""
    learning_starts: int = 5_000
    """environment steps collected before the first learner step"""
    buffer_size: int = 1_000_000
    """replay capacity in transitions (Table 4: 1e6)"""
    batch_size: int | None = None
    """transitions per learner step; None: 512 (Table 3), 16 on bandits"""
    hidden_sizes: tuple[int, ...] | None = None
    """policy and critic hidden layers; None: 1024×5 512 (Table 3), 64 64 on bandits; CPU: 256 256 256"""
    num_samples: int = 20
    """N: actions sampled per state for the E-step and the C51 mixture target (Table 4: 20)"""
    n_step: int = 5
    """n of the n-step return (Table 3)"""
    gamma: float = 0.99
    """discount (Table 3)"""
    v_min: float = -150.0
    """lower end of the task critic's support (Table 3)"""
    v_max: float = 150.0
    """upper end of the task critic's support (Table 3)"""
    cost_v_min: float | None = None
    """lower end of the cost critic's support (default -√D·cost_scale/(1-γ); the upper end is 0)"""
    num_atoms: int = 101
    """atoms of each categorical critic (Table 3)"""
    epsilon: float = 0.1
    """ε_k: KL bound of each E-step (Table 3); mompo scales it by the trade-off"""
    epsilon_mean: float | None = None
    """ε_μ: M-step KL bound on the policy mean; None: 1e-3 (Table 4, MORL), 0.01 on bandits"""
    epsilon_stddev: float = 1e-7
    """ε_σ: M-step KL bound on the policy stddev (Table 4, MORL)"""
    init_temperature: float = 10.0
    """initial temperature η_k (Table 3)"""
    init_log_alpha_mean: float = 1.0
    """initial log-space (softplus) value of the mean trust-region multiplier α_μ (Acme TF DMPO: 1)"""
    init_log_alpha_stddev: float = 10.0
    """same for α_σ (Acme TF DMPO: 10; Acme JAX MPO's 1000 holds σ nearly fixed for ~1e5 steps)"""
    action_penalization: bool = False
    """add Acme's out-of-bounds action objective (-‖a - clip(a)‖₂, KL bound 1e-3)"""
    lr: float = 1e-4
    """Adam learning rate of policy and critic (Table 3)"""
    dual_lr: float = 1e-2
    """Adam learning rate of the dual variables (Table 3)"""
    weight_decay: float = 0.0
    """decoupled (AdamW) weight decay of policy and critic; 0 online"""
    target_update_period: int | None = None
    """learner steps between hard copies into the target networks; None: 200 (Table 4, MORL), 10 on bandits"""
    grad_clip: float = 40.0
    """global gradient-norm clip of policy and critic"""
    eval_every: int = 10_000
    """evaluate every this many learner steps (control: at the next round boundary)"""
    eval_episodes: int = 10
    """episodes per evaluation and trade-off (control tasks; bandits are deterministic)"""
    hv_reference: tuple[float, float] | None = None
    """hypervolume reference point (default: the worst return of each objective)"""

    def __post_init__(self):
        """Flags left unset take their environment's default (ENV_DEFAULTS)."""
        defaults = ENV_DEFAULTS["bandit" if self.env_id in BANDITS else "control"]
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)


@dataclass
class TrainState:
    """All a checkpoint holds besides networks, optimisers, replay and RNG: counters, results, the round so
    far. `round`: rounds of episodes played (every actor plays one per round); `credit`: learner steps owed
    to the replay ratio; `last_eval`: the learner step of the last evaluation (between rounds)."""

    learner_steps: int = 0
    env_steps: int = 0
    round: int = 0
    credit: float = 0.0
    wall_time: float = 0.0
    last_eval: float = -math.inf
    last_ckpt: int = 0
    evaluations: list = field(default_factory=list)
    round_alphas: list = field(default_factory=list)
    round_actions: list = field(default_factory=list)


def fail(message: str) -> None:
    """User error: one clear line on stderr and a non-zero exit."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_finite(agent: nn.Module, step: int, run_dir: str) -> None:
    """Divergence guard before a log, an evaluation, a checkpoint or a non-finite action: stop the run."""
    if not all(torch.isfinite(p).all() for p in agent.parameters()):
        kept = f"the last good checkpoint is kept in {run_dir}"
        fail(f"training diverged by learner step {step} (parameters not finite); {kept}; lower --lr")


def native_bf16(device: torch.device) -> bool:
    """bfloat16 matmuls in hardware (Ampere or later GPUs, CPUs with avx512_bf16 or AMX), not emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def check_device(args: Args) -> tuple[torch.device, Args]:
    """Device, args with the precision used: --bf16 is dropped with a notice where bfloat16 is emulated."""
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if args.cuda and device.type == "cpu":
        print("notice: CUDA is not available, training on the CPU")
    if device.type == "cpu" and max(args.hidden_sizes) >= 1024:
        preset = "--hidden-sizes 256 256 256 --batch-size 256"
        print(f"notice: the paper's network size takes ~1 s per learner step on 2 CPU cores; use {preset}")
    # glibc hands freed blocks over 128 kB back to the OS, and every learner step page-faults its activations
    # in again (~20 %): blocks up to 32 MB come from the heap (M_MMAP_THRESHOLD), 512 MB stay (M_TRIM_...).
    if device.type == "cpu":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 32 << 20)
            libc.mallopt(-1, 512 << 20)
    if args.bf16 and not native_bf16(device):
        print(f"notice: no native bfloat16 matmuls on this {device.type.upper()}: --bf16 off, fp32 is faster")
        args = dataclasses.replace(args, bf16=False)
    return device, args


def check_args(args: Args) -> None:
    """Validate flags once, naming the flag, the value received and the fix."""
    bandit = args.env_id in BANDITS
    if not bandit and args.env_id not in control_suite_tasks():
        known = "schaffer, fonseca_fleming or a control-suite task <domain>_<task> such as cheetah_run"
        fail(f"--env-id {args.env_id!r} is unknown; use {known}")
    if not 0.0 <= args.alpha <= (1.0 if bandit or args.method == "ls" else math.inf):
        fail(f"--alpha {args.alpha} is out of range; use [0, 1] for bandits and --method ls, else α ≥ 0")
    if args.multi and args.method == "mompo":
        fail("--multi supports --method dime or ls (MO-MPO's trade-offs are KL bounds); drop --multi")
    if args.multi and not 0.0 <= args.alpha_range[0] <= args.alpha_range[1]:
        fail(f"--alpha-range {args.alpha_range} must be two increasing non-negative values")
    for name, least in AT_LEAST.items():
        if getattr(args, name) < least:
            fail(f"--{name.replace('_', '-')} {getattr(args, name)} is too small; use at least {least}")
    if not bandit and args.buffer_size < args.num_envs * (args.n_step + 1):
        fail(f"--buffer-size {args.buffer_size} cannot hold n-step windows; use at least 10000")
    if args.save_replay and (bandit or os.path.exists(args.save_replay)):
        fail(f"--save-replay {args.save_replay}: the file exists or bandits have no replay; give a new path")


# ==== 2. Environments and objectives ======================================================================
def control_suite_tasks() -> dict[str, str]:
    """Map '<domain>_<task>' to shimmy's gymnasium id 'dm_control/<domain>-<task>-v0'."""
    from dm_control import suite

    return {f"{d}_{t}": f"dm_control/{d}-{t}-v0" for d, t in suite.ALL_TASKS}


def make_env(env_id: str, render: bool = False):
    """One control-suite env; dict observations flattened in alphabetical key order (docs/datasets.md)."""

    def thunk():
        import gymnasium as gym
        import shimmy

        gym.register_envs(shimmy)
        env = gym.make(control_suite_tasks()[env_id], render_mode="rgb_array" if render else None)
        return gym.wrappers.FlattenObservation(env)

    return thunk


def make_envs(env_id: str, num_envs: int, render: bool = False):
    """Envs stepped in lockstep, reset explicitly (no autoreset); with `render`, env 0 renders frames."""
    import gymnasium as gym

    thunks = [make_env(env_id, render and i == 0) for i in range(num_envs)]
    return gym.vector.SyncVectorEnv(thunks, autoreset_mode=gym.vector.AutoresetMode.DISABLED)


def round_seeds(seed: int, round_idx: int, stream: int, n: int) -> list[int]:
    """Reset seeds of one round, a pure function of (seed, round, stream): resume needs no env state."""
    return [int(s) for s in np.random.SeedSequence([seed, round_idx, stream]).generate_state(n)]


def bandit_rewards(env_id: str, actions: torch.Tensor) -> torch.Tensor:
    """[..., 1] actions -> [..., 2] rewards -f(a) of Schaffer or Fonseca-Fleming (App. D.1.1)."""
    a = actions[..., 0]
    if env_id == "schaffer":
        return torch.stack([-(a**2), -((a - 2.0) ** 2)], -1)
    return torch.stack([torch.exp(-((a - 1.0) ** 2)) - 1.0, torch.exp(-((a + 1.0) ** 2)) - 1.0], -1)


def draw_alphas(args: Args, n: int, gen: torch.Generator, device) -> torch.Tensor:
    """n trade-offs: --alpha, or uniform in --alpha-range with --multi."""
    if not args.multi:
        return torch.full((n,), args.alpha, device=device)
    low, high = args.alpha_range
    return low + (high - low) * torch.rand(n, device=device, generator=gen)


def tradeoff_vector(alpha: torch.Tensor, args: Args) -> torch.Tensor:
    """Trade-off α -> objective weights [..., K]: the convex (1-α, α) for bandits, ls and --multi (Fig. 5:
    "α_task = 1 - α_cost"), else (1, α) with α_cost ≥ 0 (Table 4, single-α DiME and MO-MPO)."""
    convex = args.env_id in BANDITS or args.method == "ls" or args.multi
    return torch.stack([1.0 - alpha if convex else torch.ones_like(alpha), alpha], -1)


def critic_supports(args: Args, act_dim: int) -> torch.Tensor:
    """Atoms [K, I]: task [v_min, v_max]; cost [-√D·scale/(1-γ), 0], the range of its discounted sum."""
    cost_min = -math.sqrt(act_dim) * args.cost_scale / (1 - args.gamma)
    cost_min = cost_min if args.cost_v_min is None else args.cost_v_min
    task = torch.linspace(args.v_min, args.v_max, args.num_atoms)
    cost = torch.linspace(cost_min, 0.0, args.num_atoms)
    return torch.stack([task, cost])


# ==== 3. Networks: LayerNorm torso, Gaussian policy, categorical critic (App. C) ===========================
class Tanh(nn.Module):
    """tanh(x) as 2·sigmoid(2x) - 1: torch.tanh is ~4x slower on CPUs (docs/results.md, Learner speed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) if x.is_cuda else 2.0 * torch.sigmoid(2.0 * x) - 1.0


def layer_norm_mlp(in_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    """Acme's LayerNormMLP: Linear -> LayerNorm -> tanh, then Linear -> ELU for every further layer."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_sizes[0]), nn.LayerNorm(hidden_sizes[0]), Tanh()]
    for h_in, h_out in zip(hidden_sizes[:-1], hidden_sizes[1:]):
        layers += [nn.Linear(h_in, h_out), nn.ELU()]
    return nn.Sequential(*layers)


def fp32_linear(layer: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    """An output layer in fp32 under --bf16: bf16 rounding would be noise in the KLs and E-step it feeds."""
    with torch.autocast(h.device.type, enabled=False):
        return layer(h.float())


class Policy(nn.Module):
    """Diagonal Gaussian π(a|s): linear mean (no tanh), stddev = softplus(·)·0.7/softplus(0) + 1e-6."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.torso = layer_norm_mlp(obs_dim, hidden_sizes)
        self.mean = nn.Linear(hidden_sizes[-1], act_dim)
        self.stddev = nn.Linear(hidden_sizes[-1], act_dim)
        # A small initialisation: the initial policy is N(≈0, 0.7) everywhere.
        for head in (self.mean, self.stddev):
            nn.init.trunc_normal_(head.weight, std=math.sqrt(1e-4 / hidden_sizes[-1]))
            nn.init.zeros_(head.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.torso(obs)
        stddev = F.softplus(fp32_linear(self.stddev, h)) * (POLICY_INIT_SCALE / math.log(2.0))
        return fp32_linear(self.mean, h), stddev + POLICY_MIN_SCALE


class Critic(nn.Module):
    """Categorical Q_k(s, a) for K objectives: one torso, K heads of I logits (Q = Σ softmax·atoms)."""

    def __init__(self, in_dim: int, num_objectives: int, num_atoms: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.shape = (num_objectives, num_atoms)
        self.torso = layer_norm_mlp(in_dim, hidden_sizes)
        self.head = nn.Linear(hidden_sizes[-1], num_objectives * num_atoms)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs.expand(*actions.shape[:-1], -1), actions.clamp(-1.0, 1.0)], -1)
        return fp32_linear(self.head, self.torso(x)).unflatten(-1, self.shape)  # [..., K, I], fp32


class Agent(nn.Module):
    """Every learned quantity (online and target networks, dual variables) in one state_dict."""

    def __init__(self, obs_dim: int, act_dim: int, num_temperatures: int, args: Args):
        super().__init__()
        sizes = args.hidden_sizes
        self.policy, self.target_policy = (Policy(obs_dim, act_dim, sizes) for _ in range(2))
        self.critic = self.target_critic = None
        # K = 2 objectives; a bandit's rewards are exact, it has no critic.
        if args.env_id not in BANDITS:
            self.critic, self.target_critic = (
                Critic(obs_dim + act_dim, 2, args.num_atoms, sizes) for _ in range(2)
            )
        # Duals live in log space behind softplus (Acme): temperatures η_k, per-dimension α_μ, α_σ.
        eta = inv_softplus(args.init_temperature)
        self.log_temperature = nn.Parameter(torch.full((num_temperatures,), eta))
        self.log_alpha_mean = nn.Parameter(torch.full((act_dim,), args.init_log_alpha_mean))
        self.log_alpha_stddev = nn.Parameter(torch.full((act_dim,), args.init_log_alpha_stddev))
        self.update_targets()

    @torch.no_grad()
    def update_targets(self) -> None:
        """Hard copy online -> target (Table 3: every --target-update-period learner steps)."""
        self.target_policy.load_state_dict(self.policy.state_dict())
        if self.critic is not None:
            self.target_critic.load_state_dict(self.critic.state_dict())

    def duals(self) -> list[nn.Parameter]:
        return [self.log_temperature, self.log_alpha_mean, self.log_alpha_stddev]


def make_optimizers(agent: Agent, args: Args) -> dict:
    """One optimiser per parameter group, as in Acme's DMPO learner: policy, critic (if any), duals."""
    groups = ("policy",) if agent.critic is None else ("policy", "critic")
    optimizers = {
        n: torch.optim.AdamW(getattr(agent, n).parameters(), args.lr, weight_decay=args.weight_decay)
        for n in groups
    }
    optimizers["duals"] = torch.optim.Adam(agent.duals(), args.dual_lr)
    return optimizers


def compile_networks(agent: Agent) -> None:
    """torch.compile every network's forward in place (state_dict keys stay the same)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch")
    for net in filter(None, (agent.policy, agent.target_policy, agent.critic, agent.target_critic)):
        net.compile()


def inv_softplus(x: float) -> float:
    """θ such that softplus(θ) = x (initial value of a dual variable)."""
    return x + math.log(-math.expm1(-x))


def dual(param: torch.Tensor) -> torch.Tensor:
    """Positive dual variable from its log-space parameter (softplus + epsilon, Acme)."""
    return F.softplus(param) + MPO_FLOAT_EPSILON


# ==== 4. Policy evaluation: C51 target (mixture over N target-policy actions, projection), critic loss ======
def c51_target(next_pmfs: torch.Tensor, returns: torch.Tensor, discounts: torch.Tensor, atoms: torch.Tensor):
    """Project the mixture of the N target pmfs, shifted by the n-step return, onto each support (C51).
    next_pmfs [N, B, K, I], returns [B, K], discounts [B], atoms [K, I] -> target pmfs [B, K, I]."""
    mixture = next_pmfs.mean(0)  # [B, K, I]
    project = categorical_l2_project
    return torch.stack([project(mixture[:, k], returns[:, k], discounts, z) for k, z in enumerate(atoms)], 1)


def critic_loss(logits: torch.Tensor, target_pmfs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the online logits [B, K, I] to the projected targets, summed over objectives."""
    return -(target_pmfs * logits.log_softmax(-1)).sum(-1).mean(0).sum()


# ==== 5. E-step: per-objective weights, temperature dual, KL diagnostic ===================================
def compute_weights_and_temperature_loss(q_values, epsilon, temperature: torch.Tensor):
    """E-step: w_k = softmax_N(Q_k/η_k) per state (eq. 38); dual η_k(ε_k + E_s log E_a exp(Q_k/η_k)) (eq. 45).
    q_values [N, B, K] with epsilon and temperature [K], or [N, B] with scalars (one objective) -> weights
    shaped like q_values (no gradient), loss []."""
    tempered = q_values.detach() / temperature
    weights = tempered.softmax(0).detach()
    log_mean_exp = tempered.logsumexp(0).mean(0) - math.log(q_values.shape[0])  # [K] or []
    return weights, (temperature * (epsilon + log_mean_exp)).sum()


def compute_nonparametric_kl(weights: torch.Tensor) -> torch.Tensor:
    """KL(q_k ‖ π_i) of the sample-based E-step solution, mean over states: [N, B, K] -> [K], [N, B] -> []."""
    return (weights * torch.log(weights.shape[0] * weights + MPO_FLOAT_EPSILON)).sum(0).mean(0)


# ==== 6. M-step: decoupled cross-entropy and KL trust region (Acme's MPO) =================================
def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, stddev: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag(stddev²)), summed over the last (action) dimension."""
    return (-0.5 * ((x - mean) / stddev) ** 2 - stddev.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mean_p, stddev_p, mean_q, stddev_q) -> torch.Tensor:
    """Per-dimension KL(N(mean_p, stddev_p²) ‖ N(mean_q, stddev_q²)), shape of the inputs."""
    return (stddev_q / stddev_p).log() + (stddev_p**2 + (mean_p - mean_q) ** 2) / (2 * stddev_q**2) - 0.5


def compute_cross_entropy_loss(actions, weights, mean, stddev, target_mean, target_stddev) -> torch.Tensor:
    """-Σ_M w log π̃(a|s) with the decoupled N(μ_θ, σ_i) and N(μ_i, σ_θ), mean over states (eq. 51).
    actions [M, B, D], weights [M, B] (combined over objectives), distribution parameters [B, D]."""
    fixed_stddev = gaussian_log_prob(actions, mean, target_stddev)
    fixed_mean = gaussian_log_prob(actions, target_mean, stddev)
    return -(weights * (fixed_stddev + fixed_mean)).sum(0).mean()


def compute_kl_penalty_and_dual_loss(kl: torch.Tensor, alpha: torch.Tensor, epsilon: float):
    """Soft trust region per action dimension: penalty sg(α)·KL, dual α·(ε - sg(KL)); kl [B, D], α [D].
    Returns the penalty, the dual loss and the mean KL."""
    mean_kl = kl.mean(0)  # [D]
    penalty = (alpha.detach() * mean_kl).sum()
    dual_loss = (alpha * (epsilon - mean_kl.detach())).sum()
    return penalty, dual_loss, mean_kl.mean()


# ==== 7. Policy objective: how DiME, LS and MO-MPO combine the objectives =================================
def combine_objectives(q_values: torch.Tensor, tradeoff: torch.Tensor, method: str, epsilon: float):
    """Per-objective Q [N, B, K] and trade-offs [B, K] -> (E-step Q [N, B, K'], ε [K'], M-step mix [B, K']).
    dime: K E-steps with one ε, mixed by α_k (eq. 51). ls: one E-step on Σ_k α_k Q_k (Table 1).
    mompo: K E-steps with ε_k = α_k·ε, mixed equally."""
    ones = torch.ones_like(tradeoff)
    if method == "ls":
        return (q_values * tradeoff).sum(-1, keepdim=True), q_values.new_full((1,), epsilon), ones[:, :1]
    if method == "mompo":
        return q_values, epsilon * tradeoff[0], ones
    return q_values, q_values.new_full((q_values.shape[-1],), epsilon), tradeoff


class PolicyBatch(NamedTuple):
    """What the policy objective sees at the bootstrap states s_{t+n} of a minibatch (from learner_step)."""

    states: torch.Tensor  # [B, S] (with the trade-off vector appended under --multi)
    target_mean: torch.Tensor  # [B, D]: π_i = N(target_mean, target_stddev)
    target_stddev: torch.Tensor  # [B, D]
    sampled: torch.Tensor  # [N, B, D]: actions drawn from π_i
    q_values: torch.Tensor  # [N, B, K]: their Q per objective (target critic, or a bandit's exact rewards)
    tradeoff: torch.Tensor  # [B, K]: the objective weights of each sample's trade-off


def policy_loss(agent: Agent, batch: PolicyBatch, args: Args) -> tuple[torch.Tensor, dict]:
    """MPO at the batch's states: π_i = N(target_mean, target_stddev) proposed the N sampled actions, whose
    Q_k are combined per --method into K' E-steps; the M-step fits the mixture of their solutions (eq. 51).
    Returns the loss and its statistics."""
    temperature = dual(agent.log_temperature)
    alpha_mean = dual(agent.log_alpha_mean)
    alpha_stddev = dual(agent.log_alpha_stddev)
    q_values, epsilons, mix = combine_objectives(batch.q_values, batch.tradeoff, args.method, args.epsilon)
    # Acme's optional objective -‖a - clip(a)‖₂: pull the actions back into [-1, 1].
    if args.action_penalization:
        out_of_bounds = -torch.linalg.vector_norm(batch.sampled - batch.sampled.clamp(-1.0, 1.0), dim=-1)
        q_values = torch.cat([q_values, out_of_bounds[..., None]], -1)
        epsilons = F.pad(epsilons, (0, 1), value=EPSILON_PENALTY)
        mix = F.pad(mix, (0, 1), value=1.0)
    weights, temperature_loss = compute_weights_and_temperature_loss(q_values, epsilons, temperature)
    # The E-step distributions over the N actions, mixed by the trade-off (eq. 51).
    mixture = (weights * mix).sum(-1)  # [N, B]
    mean, stddev = agent.policy(batch.states)
    cross_entropy = compute_cross_entropy_loss(
        batch.sampled, mixture, mean, stddev, batch.target_mean, batch.target_stddev
    )
    # The decoupled trust region: KL(π_i ‖ N(μ_θ, σ_i)) bounds the mean, KL(π_i ‖ N(μ_i, σ_θ)) the stddev.
    kl_mean = gaussian_kl(batch.target_mean, batch.target_stddev, mean, batch.target_stddev)  # [B, D]
    kl_stddev = gaussian_kl(batch.target_mean, batch.target_stddev, batch.target_mean, stddev)  # [B, D]
    penalty_mean, loss_alpha_mean, kl_mean_avg = compute_kl_penalty_and_dual_loss(
        kl_mean, alpha_mean, args.epsilon_mean
    )
    penalty_stddev, loss_alpha_stddev, kl_stddev_avg = compute_kl_penalty_and_dual_loss(
        kl_stddev, alpha_stddev, args.epsilon_stddev
    )
    # The policy loss trains π_θ; the dual losses train η_k, α_μ and α_σ.
    loss_policy = cross_entropy + penalty_mean + penalty_stddev
    loss_dual = temperature_loss + loss_alpha_mean + loss_alpha_stddev
    kl_q_rel = compute_nonparametric_kl(weights) / epsilons  # [K']
    stats = {
        "policy_loss": loss_policy,
        "kl_mean": kl_mean_avg,
        "kl_stddev": kl_stddev_avg,
        "alpha_mean": alpha_mean.mean(),
        "alpha_stddev": alpha_stddev.mean(),
        **{f"temperature_{k}": eta for k, eta in enumerate(temperature)},
        **{f"kl_q_rel_{k}": kl for k, kl in enumerate(kl_q_rel)},
        # Q of the task objective.
        "q_min": batch.q_values[..., 0].min(),
        "q_max": batch.q_values[..., 0].max(),
        "pi_stddev_min": stddev.min(),
        "pi_stddev_max": stddev.max(),
    }
    return loss_policy + loss_dual, stats


# ==== 7a. Replay on the device: 1-step transitions per actor, n-step returns built when sampled ===========
class Replay:
    """Ring buffer of [rows, E] transitions. n-step windows never cross an episode end (terminal or cut)."""

    KEYS = ("obs", "actions", "rewards", "next_obs", "terminals", "ends")

    def __init__(self, capacity: int, num_envs: int, obs_dim: int, act_dim: int, num_objectives: int, device):
        self.rows = max(capacity // num_envs, 1)
        self.pos = 0
        self.full = False
        dims = dict(obs=(obs_dim,), actions=(act_dim,), rewards=(num_objectives,), next_obs=(obs_dim,))
        self.data = {}
        # float32 transitions; bool flags "terminals" (a true end) and "ends" (an end or a cut).
        for k in self.KEYS:
            dtype = torch.float32 if k in dims else torch.bool
            self.data[k] = torch.zeros(self.rows, num_envs, *dims.get(k, ()), device=device, dtype=dtype)

    def add(self, **row: torch.Tensor) -> None:
        for k in self.KEYS:
            self.data[k][self.pos] = row[k]
        self.pos = (self.pos + 1) % self.rows
        self.full = self.full or self.pos == 0

    def sample(self, batch_size: int, n: int, gamma: float, gen: torch.Generator):
        """n-step transitions: R = Σ_{k<m} γ^k r_{t+k}, discount γ^m·(1 - terminal), m ≤ n steps."""
        d = self.data
        device = d["obs"].device
        size, start = (self.rows, self.pos) if self.full else (self.pos, 0)
        t = (start + torch.randint(0, size - n + 1, (batch_size,), device=device, generator=gen)) % self.rows
        e = torch.randint(0, d["obs"].shape[1], (batch_size,), device=device, generator=gen)
        steps = torch.arange(n, device=device)
        idx = (t[None] + steps[:, None]) % self.rows  # [n, B]
        ends = d["ends"][idx, e].float()
        alive = torch.cumprod(torch.cat([torch.ones_like(ends[:1]), 1.0 - ends[:-1]]), 0)  # [n, B]
        # γ^k while the episode lasts.
        weights = alive * gamma ** steps[:, None].float()
        returns = (weights[..., None] * d["rewards"][idx, e]).sum(0)  # [B, K]
        taken = alive.sum(0).long()  # [B]
        last = idx.gather(0, (taken - 1)[None]).squeeze(0)
        discounts = gamma ** taken.float() * (1.0 - d["terminals"][last, e].float())
        return d["obs"][t, e], d["actions"][t, e], returns, discounts, d["next_obs"][last, e]

    def state_dict(self) -> dict:
        """Copies of the filled rows (a slice would save its whole storage): a young buffer's is small."""
        rows = self.rows if self.full else self.pos
        return {**{k: v[:rows].clone() for k, v in self.data.items()}, "pos": self.pos, "full": self.full}

    def load_state_dict(self, saved: dict) -> None:
        for k in self.KEYS:
            self.data[k][: len(saved[k])] = saved[k]
        self.pos = saved["pos"]
        self.full = saved["full"]

    def chronological(self) -> dict[str, np.ndarray]:
        """Every actor's transitions in time order, actor after actor (for --save-replay)."""
        first, count = (self.pos, self.rows) if self.full else (0, self.pos)
        order = (torch.arange(first, first + count) % self.rows).to(self.data["obs"].device)
        return {k: v[order].transpose(0, 1).flatten(0, 1).cpu().numpy() for k, v in self.data.items()}


# ==== 8. Learner step: one update of critic, policy and duals =============================================
def learner_step(agent: Agent, optimizers: dict, replay: Replay | None, atoms, args: Args, gen) -> dict:
    """One gradient step on every parameter group; returns the statistics as tensors (no host sync)."""
    device = agent.log_temperature.device
    bandit = replay is None
    # A one-step bandit: a single dummy state, exact rewards.
    if bandit:
        states = torch.zeros(args.batch_size, 1, device=device)
    else:
        obs, actions, returns, discounts, states = replay.sample(
            args.batch_size, args.n_step, args.gamma, gen
        )
    # The trade-off of every sample: fixed, or a fresh draw per transition with --multi (App. A relabelling).
    tradeoff = tradeoff_vector(draw_alphas(args, args.batch_size, gen, device), args)  # [B, K]
    if args.multi:
        states = torch.cat([states, tradeoff], -1)
    # --bf16: matmuls in bfloat16 (heads, losses and weights stay fp32).
    with torch.autocast(device.type, torch.bfloat16, enabled=args.bf16):
        # N actions from the target policy π_i at s_{t+n}, valued per objective by the target critic.
        with torch.no_grad():
            target_mean, target_stddev = agent.target_policy(states)
            noise = torch.randn(args.num_samples, *target_mean.shape, device=device, generator=gen)
            sampled = target_mean + target_stddev * noise  # [N, B, D]
            if bandit:
                q_values = bandit_rewards(args.env_id, sampled)  # [N, B, K]
            else:
                next_pmfs = agent.target_critic(states, sampled).softmax(-1)  # [N, B, K, I]
                q_values = (next_pmfs * atoms).sum(-1)  # [N, B, K]
                target_pmfs = c51_target(next_pmfs, returns, discounts, atoms)
        batch = PolicyBatch(states, target_mean, target_stddev, sampled, q_values, tradeoff)
        loss, stats = policy_loss(agent, batch, args)
        if not bandit:
            obs = torch.cat([obs, tradeoff], -1) if args.multi else obs
            stats["critic_loss"] = critic_loss(agent.critic(obs, actions), target_pmfs)
            loss = loss + stats["critic_loss"]
    stats["q_mean"] = q_values.mean()
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for name, opt in optimizers.items():
        if name != "duals":
            nn.utils.clip_grad_norm_(getattr(agent, name).parameters(), args.grad_clip)
        opt.step()
    with torch.no_grad():
        for p in agent.duals():
            p.clamp_(min=MIN_LOG_DUAL)
    # Detached, so that no autograd graph is kept until the log; TensorBoard's names.
    return {f"losses/{k}": v.detach() for k, v in stats.items()}


# ========================================================================================================
# The algorithm ends here: sections 1-8 above copy into other code as one block. Below is the harness
# (training loop, evaluation, logging, checkpoints, export): an algorithm change should not touch it.
# ========================================================================================================


# ==== 9. main: seeding, run directory, actors and learner =================================================
class Run:
    """A run's directory (the checkpoint's on --resume), TensorBoard (wandb), progress bar, last-log clock."""

    def __init__(self, args: Args, state: TrainState, counter: str, total: int):
        from torch.utils.tensorboard import SummaryWriter

        config = dataclasses.asdict(args)
        name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
        self.dir = os.path.join(args.output_dir, name)
        if args.resume:
            self.dir = os.path.dirname(os.path.abspath(args.resume))
            name = os.path.basename(self.dir)
        try:
            os.makedirs(self.dir, exist_ok=bool(args.resume))
            if not args.resume:
                write_json(os.path.join(self.dir, "args.json"), config)
        except OSError as e:
            fail(f"cannot write the run directory {self.dir} ({e.strerror}); pass a writable --output-dir")
        if args.track:
            import wandb

            wandb.init(project=args.wandb_project_name, config=config, name=name, sync_tensorboard=True)
        self.writer = SummaryWriter(self.dir)
        table = "\n".join(f"|{k}|{v}|" for k, v in config.items())
        self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        # disable=None: no bar when not a terminal (Run.log prints a line instead).
        bar = dict(unit="step", desc=f"{args.method} {args.env_id}", dynamic_ncols=True, disable=None)
        self.progress = tqdm(total=total, initial=getattr(state, counter), **bar)
        self.start = time.time() - state.wall_time
        # The rate and ETA count this process's steps (the bar's: env steps, a bandit's learner steps) over
        # its time outside evaluations.
        self.counter = counter
        self.first_steps = (state.learner_steps, getattr(state, counter))
        self.clock = time.time()
        self.eval_seconds = 0.0
        self.evaluations = 0
        self.eval_every = args.eval_every

    def log(self, agent: Agent, metrics: list[dict], state: TrainState) -> None:
        """Average the metric tensors since the last log with one device->host copy."""
        step = state.learner_steps
        check_finite(agent, step, self.dir)
        keys = list(metrics[0])
        values = torch.stack([torch.stack([m[k] for m in metrics]).mean() for k in keys]).tolist()
        metrics.clear()
        for k, v in zip(keys, values):
            self.writer.add_scalar(k, v, step)
        seconds = max(time.time() - self.clock - self.eval_seconds, 1e-9)
        sps = (step - self.first_steps[0]) / seconds
        self.writer.add_scalar("charts/SPS", sps, step)
        if self.progress.disable:
            done = getattr(state, self.counter)
            done_here = max(done - self.first_steps[1], 1)
            left = self.progress.total - done
            evaluations_left = left * (step - self.first_steps[0]) / done_here // self.eval_every
            seconds_per_evaluation = self.eval_seconds / max(self.evaluations, 1)
            eta = left * seconds / done_here + evaluations_left * seconds_per_evaluation
            unit = self.counter[:-1].replace("_", " ")
            line = f"{unit} {done}/{self.progress.total}, learner step {step}: {sps:.1f} learner steps/s"
            print(f"{line}, ETA {eta / 60:.0f} min", flush=True)


@dataclass
class Learner:
    """What a learner step needs (no replay and no atoms on a bandit), and the metrics since the last log."""

    agent: Agent
    optimizers: dict
    replay: Replay | None
    atoms: torch.Tensor | None
    gen: torch.Generator
    metrics: list = field(default_factory=list)


def main(args: Args, typed: frozenset[str] = frozenset()) -> dict:
    """Train and evaluate; `typed` names the flags given on the command line (checked against a --resume)."""
    with StopSignals() as stop:
        return train(args, typed, stop)


def train(args: Args, typed: frozenset[str], stop: "StopSignals") -> dict:
    """Seeding, actors, learner, the training loop (sections 1-8), the final evaluation and results."""
    # Evaluation renders only for --capture-video (EGL); set before dm_control loads.
    os.environ.setdefault("MUJOCO_GL", "egl" if args.capture_video else "disable")
    check_args(args)
    ckpt = load_checkpoint(args, typed) if args.resume else None
    args = ckpt["args"] if ckpt else args
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device, args = check_device(args)
    gen = torch.Generator(device).manual_seed(args.seed)
    bandit = args.env_id in BANDITS
    envs = None if bandit else make_envs(args.env_id, args.num_envs)
    # A bandit has a dummy state and a scalar action.
    obs_dim = act_dim = 1
    if not bandit:
        (obs_dim,) = envs.single_observation_space.shape
        (act_dim,) = envs.single_action_space.shape
    num_temperatures = (1 if args.method == "ls" else 2) + args.action_penalization
    # A --multi policy and critic also see the trade-off vector (K = 2).
    cond_dim = 2 if args.multi else 0
    agent = Agent(obs_dim + cond_dim, act_dim, num_temperatures, args).to(device)
    if args.compile:
        compile_networks(agent)
    atoms = None if bandit else critic_supports(args, act_dim).to(device)
    replay = None if bandit else Replay(args.buffer_size, args.num_envs, obs_dim, act_dim, 2, device)
    learner = Learner(agent, make_optimizers(agent, args), replay, atoms, gen)
    state = TrainState(**ckpt["state"]) if ckpt else TrainState()
    if ckpt:
        restore(ckpt, learner)
    eval_alphas = [args.alpha]
    if args.multi:
        eval_alphas = args.eval_alphas or np.linspace(*args.alpha_range, 5).tolist()
    counter, total = ("learner_steps", args.total_steps) if bandit else ("env_steps", args.total_env_steps)
    stop.run = run = Run(args, state, counter, total)
    checkpoint_every = args.eval_every if args.checkpoint_every is None else args.checkpoint_every
    while (state.round_actions or getattr(state, counter) < total) and not stop.signum:
        if not state.round_actions and state.learner_steps - state.last_eval >= args.eval_every:
            evaluate_and_log(agent, args, eval_alphas, state, run)
        if checkpoint_every and state.learner_steps - state.last_ckpt >= checkpoint_every:
            save_checkpoint(run, args, learner, state)
        if bandit and not stop.signum:
            learn(learner, args, state, run)
            run.progress.update(1)
        elif not bandit:
            run_round(envs, learner, args, state, run, stop)
    # A stop during the loop: checkpoint the learner step reached, print the --resume line, exit.
    stop.end_loop(lambda: save_checkpoint(run, args, learner, state), state.learner_steps)
    # Before the final evaluation, which an extended (resumed) run would not make.
    if checkpoint_every:
        save_checkpoint(run, args, learner, state)
    evaluate_and_log(agent, args, eval_alphas, state, run)
    state.wall_time = time.time() - run.start
    run.progress.close()
    run.writer.close()
    if args.save_model:
        export_policy(agent, args, os.path.join(run.dir, "policy.pt2"))
    if args.save_replay:
        save_replay(replay, args, args.save_replay)
    return write_results(args, state, run.dir, eval_alphas, act_dim)


class StopSignals:
    """SIGINT/SIGTERM in the training loop set `signum`: the loop ends after its step, `end_loop` checkpoints
    and exits; before or after the loop, or twice: exit at once. `with` gives the caller's handlers back."""

    signum = 0
    run = None
    loop_ended = False

    def __enter__(self) -> "StopSignals":
        self.previous = {
            signum: signal.signal(signum, self.handle) for signum in (signal.SIGINT, signal.SIGTERM)
        }
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum: int, frame) -> None:
        if self.run is not None and not self.signum and not self.loop_ended:
            self.signum = signum
            return
        kept = f"the last checkpoint in {self.run.dir} is kept" if self.run else "nothing to resume"
        print(f"{signal.Signals(signum).name}: stopped at once; {kept}", file=sys.stderr, flush=True)
        if self.run is None:
            sys.exit(128 + signum)
        # Maybe mid-write of a checkpoint: skip Python's clean-up, the atomic writes keep the files whole.
        os._exit(128 + signum)

    def end_loop(self, save_checkpoint, step: int) -> None:
        """After the loop: with a stop signal, checkpoint, print the --resume line and exit; else go on."""
        self.loop_ended = True
        if not self.signum:
            return
        save_checkpoint()
        self.run.progress.close()
        self.run.writer.close()
        resume = f"python {SCRIPT}.py --resume {os.path.join(self.run.dir, 'checkpoint.pt')}"
        line = f"{signal.Signals(self.signum).name}: stopped at learner step {step}; continue with: {resume}"
        print(line, file=sys.stderr)
        sys.exit(128 + self.signum)


def run_round(envs, learner: Learner, args: Args, state: TrainState, run: Run, stop: StopSignals) -> None:
    """Every actor plays one episode (lockstep, resets seeded by the round); learner steps interleave. A stop
    mid-episode returns after the current learner or env step; a resumed round re-executes its actions."""
    gen = learner.gen
    device = gen.device
    obs, _ = envs.reset(seed=round_seeds(args.seed, state.round, 0, args.num_envs))
    # A new round: one trade-off per actor and episode (App. C).
    if not state.round_actions:
        state.round_alphas = draw_alphas(args, args.num_envs, gen, device).tolist()
    cond = tradeoff_vector(torch.tensor(state.round_alphas, device=device), args)
    episode_return = torch.zeros(args.num_envs, 2, device=device)
    done = False
    for executed in state.round_actions:
        obs, rewards, _, done = step_envs(envs, np.array(executed, np.float32), args, device)
        episode_return = episode_return + rewards
    obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
    while not done or state.credit >= 1.0:
        if stop.signum and state.round_actions and not done:
            return
        if state.credit >= 1.0:
            learn(learner, args, state, run)
            state.credit -= 1.0
            continue
        # fp32 even with --bf16: faster for E observations (docs/results.md).
        with torch.no_grad():
            mean, stddev = learner.agent.policy(torch.cat([obs, cond], -1) if args.multi else obs)
            actions = (mean + stddev * torch.randn(mean.shape, device=device, generator=gen)).clamp(-1.0, 1.0)
        executed = actions.cpu().numpy()
        # Diverged since the last log: stop before the physics does.
        if not np.isfinite(executed).all():
            check_finite(learner.agent, state.learner_steps, run.dir)
        state.round_actions.append(executed.tolist())
        transition = dict(obs=obs, actions=actions)
        obs, rewards, terminals, done = step_envs(envs, executed, args, device)
        learner.replay.add(**transition, rewards=rewards, next_obs=obs, terminals=terminals, ends=done)
        episode_return = episode_return + rewards
        state.env_steps += args.num_envs
        run.progress.update(args.num_envs)
        if state.env_steps >= max(args.learning_starts, args.num_envs * args.n_step):
            state.credit += args.num_envs * args.replay_ratio
    for tag, value in zip(("episodic_return", "episodic_cost"), episode_return.mean(0).tolist()):
        run.writer.add_scalar(f"charts/{tag}", value, state.env_steps)
    state.round += 1
    state.round_actions = []


def step_envs(envs, executed: np.ndarray, args: Args, device) -> tuple:
    """Step the actors: next observations [E, S], rewards [E, K] (task, action cost), terminals [E], done."""
    next_obs, reward, terminated, truncated, _ = envs.step(executed)
    cost = -torch.linalg.vector_norm(torch.as_tensor(executed, device=device), dim=-1) * args.cost_scale
    rewards = torch.stack([torch.as_tensor(reward, dtype=torch.float32, device=device), cost], -1)
    next_obs = torch.as_tensor(next_obs, dtype=torch.float32, device=device)
    return next_obs, rewards, torch.as_tensor(terminated), bool(np.any(terminated | truncated))


def learn(learner: Learner, args: Args, state: TrainState, run: Run) -> None:
    """One learner step, the target update and the log when due."""
    agent = learner.agent
    stats = learner_step(agent, learner.optimizers, learner.replay, learner.atoms, args, learner.gen)
    learner.metrics.append(stats)
    state.learner_steps += 1
    if state.learner_steps % args.target_update_period == 0:
        agent.update_targets()
    if state.learner_steps % args.log_every == 0:
        run.log(agent, learner.metrics, state)


# ==== 10. Evaluation: per-trade-off returns, Pareto front, hypervolume ====================================
@torch.no_grad()
def evaluate(agent: Agent, args: Args, alpha: float, round_idx: int, device, video: str | None = None):
    """Per-episode objective returns [episodes, K] of the mean action (clipped to [-1, 1] on control tasks);
    with `video`, every VIDEO_FRAME_SKIP-th frame of the first episode goes into that GIF."""
    act = functools.partial(policy_mean, agent, args, alpha)
    if args.env_id in BANDITS:
        return bandit_rewards(args.env_id, act(torch.zeros(1, 1, device=device))).cpu().numpy()
    envs = make_envs(args.env_id, args.eval_episodes, render=video is not None)
    obs, _ = envs.reset(seed=round_seeds(args.seed, round_idx, 1, args.eval_episodes))
    returns = np.zeros((args.eval_episodes, 2))
    alive = np.ones(args.eval_episodes, bool)
    frames = []
    t = 0
    while alive.any():
        if video and alive[0] and t % VIDEO_FRAME_SKIP == 0:
            frames.append(envs.envs[0].render())
        actions = act(torch.as_tensor(obs, dtype=torch.float32, device=device)).clamp(-1.0, 1.0).cpu().numpy()
        obs, reward, terminated, truncated, _ = envs.step(actions)
        returns[alive] += np.stack([reward, -np.linalg.norm(actions, axis=-1) * args.cost_scale], -1)[alive]
        alive &= ~(terminated | truncated)
        t += 1
    envs.close()
    if video:
        import imageio

        os.makedirs(os.path.dirname(video), exist_ok=True)
        # The control suite steps at 100 Hz: 10 ms per step.
        imageio.mimsave(video, frames, duration=10 * VIDEO_FRAME_SKIP, loop=0)
    return returns


def policy_mean(agent: Agent, args: Args, alpha: float, obs: torch.Tensor) -> torch.Tensor:
    """The policy's mean action at observations [B, S] (a --multi policy also sees the trade-off α)."""
    cond = tradeoff_vector(torch.tensor([alpha], device=obs.device), args)
    return agent.policy(torch.cat([obs, cond.expand(len(obs), -1)], -1) if args.multi else obs)[0]


def evaluate_and_log(agent: Agent, args: Args, eval_alphas: list, state: TrainState, run: Run) -> None:
    """Evaluate every trade-off, append to the results, log eval/ tags (and snapshot the policy)."""
    step = state.learner_steps
    env_steps = state.env_steps
    device = next(agent.parameters()).device
    start = time.time()
    check_finite(agent, step, run.dir)
    if step == 0 and args.env_id not in BANDITS:
        run.progress.write(f"step 0: evaluating the initial policy ({args.eval_episodes} episodes per α)")
    if args.save_model:
        export_policy(agent, args, os.path.join(run.dir, "policies", f"step_{step}.pt2"))
    for alpha in eval_alphas:
        video = os.path.join(run.dir, "videos", f"step_{step}_alpha_{alpha}.gif")
        returns = evaluate(agent, args, alpha, state.round, device, video if args.capture_video else None)
        mean = returns.mean(0).tolist()
        record = {"step": step, "env_steps": env_steps, "alpha": alpha, "returns": returns.tolist()}
        record["mean"] = mean
        line = f"step {step} (env steps {env_steps}) α {alpha}: returns {mean[0]:.2f}, {mean[1]:.2f}"
        # A bandit: no env steps; the policy is one Gaussian, its mean is the action played.
        if args.env_id in BANDITS:
            with torch.no_grad():
                action = policy_mean(agent, args, alpha, torch.zeros(1, 1, device=device)).item()
            record["mean_action"] = action
            line = f"step {step} α {alpha}: returns {mean[0]:.2f}, {mean[1]:.2f}, mean action {action:.2f}"
        state.evaluations.append(record)
        run.progress.write(line)
        prefix = f"eval/alpha_{alpha}/" if args.multi else "eval/"
        for tag, value in zip(("episodic_return", "episodic_cost"), mean):
            run.writer.add_scalar(prefix + tag, value, step)
    state.last_eval = step
    run.eval_seconds += time.time() - start
    run.evaluations += 1


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """True for the points no other point dominates (every objective is maximised)."""
    dominated = (points[None] >= points[:, None]).all(-1) & (points[None] > points[:, None]).any(-1)
    return ~dominated.any(1)


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Area dominated by 2-D points and bounded below by the reference point (maximisation)."""
    front = points[pareto_mask(points) & (points > reference).all(-1)]
    area, best_y = 0.0, reference[1]
    # Sweep from the best first objective down.
    for x, y in front[np.argsort(-front[:, 0])]:
        if y > best_y:
            area, best_y = area + (x - reference[0]) * (y - best_y), y
    return float(area)


def write_results(args: Args, state: TrainState, run_dir: str, eval_alphas: list, act_dim: int) -> dict:
    """results.json (docs/dime_morl.md) with the final evaluation's Pareto front and hypervolume; a plot."""
    # The last evaluation, one entry per trade-off.
    last = state.evaluations[-len(eval_alphas) :]
    final = [{"alpha": e["alpha"], "mean": e["mean"], "std": np.std(e["returns"], 0).tolist()} for e in last]
    points = np.array([f["mean"] for f in final])
    # Hypervolume reference: each objective's worst return (bandits: its value at the other's optimum).
    worst = {"schaffer": [-4.0, -4.0], "fonseca_fleming": [-1.0, -1.0]}
    worst = worst.get(args.env_id, [0.0, -math.sqrt(act_dim) * args.cost_scale * CONTROL_EPISODE_STEPS])
    reference = np.array(args.hv_reference or worst)
    results = {"algo": SCRIPT, "method": args.method, "env_id": args.env_id, "seed": args.seed}
    results["alpha"] = None if args.multi else args.alpha
    results["objectives"] = ["f1", "f2"] if args.env_id in BANDITS else ["task", "cost"]
    results.update(evaluations=state.evaluations, final=final if args.multi else final[0])
    results.update(pareto=points[pareto_mask(points)].tolist(), hypervolume=hypervolume(points, reference))
    results.update(hv_reference=reference.tolist(), learner_steps=state.learner_steps)
    results.update(env_steps=state.env_steps, wall_time_s=state.wall_time, args=dataclasses.asdict(args))
    results["learner_steps_per_second"] = state.learner_steps / max(state.wall_time, 1e-9)
    results["precision"] = "bf16 autocast, fp32 heads" if args.bf16 else "fp32"
    write_json(os.path.join(run_dir, "results.json"), results)
    plot_front(results, os.path.join(run_dir, "pareto.png"))
    return results


def plot_front(results: dict, path: str) -> None:
    """Every evaluation (coloured by learner step) and the final one per α; bandits: over the true front."""
    from matplotlib.figure import Figure

    env_id = results["env_id"]
    evaluations = results["evaluations"]
    ax = Figure(figsize=(5, 4), layout="tight").subplots()
    # A bandit's true front: the rewards of every Pareto-optimal action.
    if env_id in BANDITS:
        optimal = torch.linspace(*((0.0, 2.0) if env_id == "schaffer" else (-1.0, 1.0)), 200)[:, None]
        ax.plot(*bandit_rewards(env_id, optimal).T, color="0.8", lw=3, label="Pareto front")
    history = np.array([e["mean"] for e in evaluations]).T
    steps = [e["step"] for e in evaluations]
    sc = ax.scatter(*history, c=steps, cmap="viridis", s=12, label="evaluations")
    ax.scatter(*np.array(results["pareto"]).T, color="C3", marker="*", s=120, label="final, non-dominated")
    x_label, y_label = (f"return: {name}" for name in results["objectives"])
    ax.set(xlabel=x_label, ylabel=y_label, title=f"{env_id}, {results['method']}, α = {results['alpha']}")
    ax.figure.colorbar(sc, label="learner step")
    ax.legend(fontsize=8)
    ax.figure.savefig(path, dpi=100)


# ==== 11. Run directory, checkpoints (atomic), resume, export =============================================
def write_json(path: str, obj) -> None:
    atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text(json.dumps(obj, indent=1)))


def atomic_write(path: str, write) -> None:
    """Write a temporary file beside `path` (same suffix) and rename it: a crash never leaves half a file."""
    tmp = os.path.join(os.path.dirname(path), f".tmp{os.getpid()}.{os.path.basename(path)}")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(run: Run, args: Args, learner: Learner, state: TrainState) -> None:
    """Everything needed to continue exactly: networks, targets, duals, optimisers, replay, RNG, the metrics
    since the last log, the TrainState (a stopped round's trade-offs and actions too)."""
    check_finite(learner.agent, state.learner_steps, run.dir)
    state.wall_time = time.time() - run.start
    state.last_ckpt = state.learner_steps
    ckpt = {"script": SCRIPT, "args": dataclasses.asdict(args), "agent": learner.agent.state_dict()}
    ckpt["optimizers"] = {k: o.state_dict() for k, o in learner.optimizers.items()}
    ckpt["replay"] = None if learner.replay is None else learner.replay.state_dict()
    ckpt.update(rng=learner.gen.get_state(), metrics=learner.metrics, state=dataclasses.asdict(state))
    atomic_write(os.path.join(run.dir, "checkpoint.pt"), lambda f: torch.save(ckpt, f))


def load_checkpoint(args: Args, typed: frozenset[str] = frozenset()) -> dict:
    """Read a checkpoint for --resume; refuse an unreadable one, another script's, or conflicting flags."""
    try:
        ckpt = torch.load(args.resume, map_location="cpu", weights_only=True)
    except Exception as e:
        fail(f"--resume {args.resume} is not a readable checkpoint ({type(e).__name__}); give a checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("script") != SCRIPT:
        fail(f"--resume {args.resume} was not written by dime_morl.py; pass one of its checkpoint.pt files")
    ckpt["args"] = Args(**resumed_args(args, typed, ckpt["args"]))
    return ckpt


def resumed_args(args: Args, typed: frozenset[str], saved: dict) -> dict:
    """The checkpoint's flags, with the RESUME_OVERRIDES given now. A flag is given when typed on the command
    line (even at its default) or away from its default; a given flag outside RESUME_OVERRIDES must agree."""
    # Through JSON, tuples and lists compare equal.
    as_json = lambda a: json.loads(json.dumps(a))
    now = as_json(dataclasses.asdict(args))
    default = as_json(dataclasses.asdict(Args(env_id=args.env_id)))
    given = {k for k in now if now[k] != default[k] or "--" + k.replace("_", "-") in typed}
    for k in sorted(given - RESUME_OVERRIDES):
        if now[k] != as_json(saved[k]):
            flag = "--" + k.replace("_", "-")
            fail(f"--resume: the checkpoint was trained with {flag} {saved[k]}, got {now[k]}; drop {flag}")
    return {**saved, **{k: getattr(args, k) for k in given & RESUME_OVERRIDES}}


def restore(ckpt: dict, learner: Learner) -> None:
    """Load a checkpoint's networks, optimisers, replay, RNG and metrics since the last log in place."""
    try:
        learner.agent.load_state_dict(ckpt["agent"])
    except RuntimeError as e:
        missing = str(e).splitlines()[-1].strip()
        fail(f"--resume: the checkpoint's parameters do not fit this script ({missing}); start a new run")
    for k, opt in learner.optimizers.items():
        opt.load_state_dict(ckpt["optimizers"][k])
    if learner.replay is not None:
        learner.replay.load_state_dict(ckpt["replay"])
    learner.gen.set_state(ckpt["rng"])
    learner.metrics = [
        {k: v.to(next(learner.agent.parameters()).device) for k, v in m.items()}
        for m in ckpt.get("metrics", [])
    ]


def export_policy(agent: Agent, args: Args, path: str) -> None:
    """torch.export of the policy: `torch.export.load(path).module()(obs)` -> (mean, stddev); meta.json."""
    policy = Policy(agent.policy.torso[0].in_features, agent.policy.mean.out_features, args.hidden_sizes)
    policy.load_state_dict(agent.policy.state_dict())
    example = torch.zeros(2, policy.torso[0].in_features)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(policy.cpu().eval(), (example,), dynamic_shapes=({0: batch},))
    meta = {"env_id": args.env_id, "obs_dim": example.shape[1], "act_dim": policy.mean.out_features}
    meta.update(multi=args.multi, hidden_sizes=list(args.hidden_sizes), script=f"{SCRIPT}.py")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: torch.export.save(program, f, extra_files={"meta.json": json.dumps(meta)}))


def save_replay(replay: Replay, args: Args, path: str) -> None:
    """The replay as a project HDF5 dataset (common.datasets; task reward; each actor's last row ends its
    stream), written atomically."""
    from common.datasets import make_dataset, save_hdf5

    data = replay.chronological()
    rows = len(data["obs"]) // args.num_envs
    timeouts = data["ends"] & ~data["terminals"]
    # Each actor's stream is cut at its last row.
    timeouts[rows - 1 :: rows] |= ~data["terminals"][rows - 1 :: rows]
    rewards = data["rewards"][:, 0]
    columns = (data["obs"], data["actions"], rewards, data["next_obs"], data["terminals"], timeouts)
    save_hdf5(make_dataset(*columns, env_id=args.env_id), path, source="dime_morl.py replay", seed=args.seed)


if __name__ == "__main__":
    # The flags on the command line, even those given at their default (load_checkpoint).
    typed = frozenset(a.split("=")[0] for a in sys.argv[1:])
    main(tyro.cli(Args, description=__doc__.split("\n\n")[0]), typed)
