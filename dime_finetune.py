# docs and experiment results: docs/dime_finetune.md
"""Online finetuning from a teacher policy with DiME or LS, fixed or learned trade-off (Sec. 5.1, 6.3, D.3).

Online MPO with two objectives: the task return (a C51 critic) and staying close to a teacher π_b, whose
"Q" is log π_b(a|s) - log π_i(a|s) on the sampled actions (no critic needed, eq. 6-8). Per learner step:
    dime  E-step per objective: w_1 = softmax(Q/η_1) (η_1 learned with ε), w_2 = softmax(log(π_b/π_i)/η_2)
          (η_2 learned with --epsilon-teacher, or fixed to 1 with --fixed-eta2: then q_2 = π_b, eq. 8);
          the M-step fits (1-α)·q_1 + α·q_2 (eq. 7)
    ls    one E-step on ((1-α)·Q + α·log(π_b/π_i))/η (eq. 6): the trade-off and the Q scale meet in η
α = 0 is plain (distributional) MPO from scratch; α = 1 distils the teacher. `--learn-alpha` learns
α = sigmoid(x) by descending J(α) = α·(E_{s, a~π_i} Q(s, a) - c) (Sec. 6.3): α grows while the policy's
value is below the threshold c (the teacher's, by default) and shrinks above it.

Decisions the paper leaves open (docs/dime_finetune.md, "Implementation details"):
- --teacher defaults to the task's *middle* zoo policy (zoo/manifest.json), so there is room to beat it.
- J(α) is measured on the scale of returns, where c is known: c ("the expected return from fully
  imitating the prior") = (1 - --threshold-margin) × the teacher's mean episode return with sampled actions,
  and E_{s, a~π_i} Q(s, a) is the actors' mean return in the latest round (sampled actions of π_θ). The
  critic's own E[Q] climbs from 0 for ~15k learner steps: against a fixed c it held α at its bound for a
  whole 60k-step run, and against the critic's value of the teacher's actions it let α fall at once
  (docs/dime_finetune.md). --return-threshold fixes c.
- The learned α cannot wind up: its logit is clamped to ±--tradeoff-logit-bound (it can be held at --alpha
  for the first --alpha-warmup-steps learner steps; off by default, as J(α) does not wait for the critic).
- As in dime_morl.py and Acme's DMPO learner, the E-step runs on the bootstrap states s_{t+n} and shares
  the N target-policy actions and the single target-critic pass of the C51 target.
- Actors are a lockstep vector env reset together ("rounds"), seeds from (seed, round); evaluations fall
  between rounds. A stop mid-round keeps its actions: --resume re-executes them (deterministic envs) exactly.
Shape letters: B batch, N sampled actions per state, D action dims, I atoms, E actors.
"""

import contextlib
import ctypes
import dataclasses
import json
import logging
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
from common.datasets import DatasetError, zoo_policies

SCRIPT = os.path.basename(__file__)
# Acme's: the ε added to every softplus dual, the duals' lower clamp (_MIN_LOG_TEMPERATURE), and the
# Gaussian head's stddev at initialisation and its floor.
MPO_FLOAT_EPSILON = 1e-8
MIN_LOG_DUAL = -18.0
POLICY_INIT_SCALE = 0.7
POLICY_MIN_SCALE = 1e-6
ROOT = os.path.dirname(os.path.abspath(__file__))
CPU_PRESET = "--hidden-sizes 256 256 256 --batch-size 256"
NETWORKS = ("policy", "critic")
RESUME_OVERRIDES = {"total_env_steps", "checkpoint_every", "eval_every", "resume", "cuda", "track"}
RESUME_OVERRIDES |= {"save_model", "log_every", "compile", "bf16"}
AT_LEAST = dict(batch_size=1, num_samples=1, n_step=1, num_envs=1, num_atoms=2, eval_episodes=1)


# ==== 1. Args ===========================================================================================
@dataclass
class Args:
    exp_name: str = SCRIPT[: -len(".py")]
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
    save_model: bool = False
    """export the policy (torch.export, loads without this file) to <run>/policy.pt2 at the end"""
    checkpoint_every: int | None = None
    """write <run>/checkpoint.pt every this many learner steps (at the next round boundary; default: at every
    evaluation); 0 = never"""
    resume: str | None = None
    """a checkpoint.pt to continue exactly (same run directory and flags; --total-env-steps may grow)"""
    log_every: int = 100
    """log losses every this many learner steps (the learner's only device->host copy)"""
    compile: bool = False
    """torch.compile the networks (faster learner steps after some seconds of compilation)"""
    bf16: bool = False
    """bfloat16 torsos (heads, weights, losses in fp32): ~2x faster on GPUs and CPUs with avx512_bf16 or AMX;
    ignored with a notice on other CPUs, where fp32 is faster"""

    # Algorithm specific arguments

    env_id: str = "cartpole_swingup"
    """control-suite task <domain>_<task>"""
    teacher: str | None = None
    """exported teacher policy (.pt2: observations -> (mean, stddev)); default: the task's middle zoo one"""
    method: Literal["dime", "ls"] = "dime"
    """how the objectives are combined: DiME (eq. 7-8) or linear scalarization (eq. 6)"""
    alpha: float = 0.5
    """trade-off in [0, 1]: weight of the teacher objective (the initial value with --learn-alpha)"""
    learn_alpha: bool = False
    """learn α = sigmoid(x) by descending α·(E[Q] - c) (Sec. 6.3)"""
    return_threshold: float | None = None
    """c of the learned trade-off, an episode return; default: from the teacher's (--threshold-margin)"""
    threshold_margin: float = 0.1
    """c = (1 - margin)·the teacher's mean episode return with sampled actions (what α = 1 can reach)"""
    tradeoff_logit_bound: float = 4.0
    """the learned α's logit is clamped to ±this (α ∈ [0.018, 0.982]): no wind-up past saturation"""
    alpha_warmup_steps: int = 0
    """learner steps during which the learned α is held at --alpha (0: learned from the first step)"""
    fixed_eta2: bool = False
    """dime: fix the teacher objective's temperature to 1, so its E-step is the teacher itself (eq. 8)"""
    epsilon_teacher: float = 0.1
    """dime: KL bound of the teacher objective's E-step when η_2 is learned"""
    total_env_steps: int = 1_000_000
    """environment steps (summed over actors) to train for"""
    num_envs: int = 4
    """number of actors"""
    replay_ratio: float = 0.25
    """learner steps per environment step"""
    learning_starts: int = 5_000
    """environment steps collected before the first learner step"""
    buffer_size: int = 1_000_000
    """replay capacity in transitions"""
    batch_size: int = 1024
    """transitions per learner step (Table 4, finetuning)"""
    hidden_sizes: tuple[int, ...] = (1024, 1024, 1024, 1024, 1024, 512)
    """hidden layers of policy and critic (Table 3); CPU preset: 256 256 256"""
    num_samples: int = 20
    """N: actions sampled per state for the E-step and the C51 mixture target"""
    n_step: int = 5
    """n of the n-step return (Table 3)"""
    gamma: float = 0.99
    """discount (Table 3)"""
    v_min: float = -150.0
    """lower end of the critic's support (Table 3)"""
    v_max: float = 150.0
    """upper end of the critic's support (Table 3)"""
    num_atoms: int = 101
    """atoms of the categorical critic (Table 3)"""
    epsilon: float = 0.1
    """ε_1: KL bound of the task objective's E-step (Table 3)"""
    epsilon_mean: float = 0.0025
    """ε_μ: M-step KL bound on the policy mean (Table 3)"""
    epsilon_stddev: float = 1e-5
    """ε_σ: M-step KL bound on the policy stddev (Table 3)"""
    init_temperature: float = 10.0
    """initial temperatures η (Table 3)"""
    init_log_alpha_mean: float = 1.0
    """initial log-space (softplus) value of the mean trust-region multiplier α_μ (Acme TF DMPO)"""
    init_log_alpha_stddev: float = 10.0
    """same for α_σ (Acme TF DMPO)"""
    lr: float = 1e-4
    """Adam learning rate of policy and critic (Table 3)"""
    dual_lr: float = 1e-2
    """Adam learning rate of the dual variables and of the learned trade-off (Table 3)"""
    target_update_period: int = 100
    """learner steps between hard copies into the target networks (Table 3)"""
    grad_clip: float = 40.0
    """global gradient-norm clip of policy and critic"""
    eval_every: int = 10_000
    """evaluate every this many learner steps (at the next round boundary)"""
    eval_episodes: int = 10
    """episodes per evaluation"""


@dataclass
class TrainState:
    """All a checkpoint holds besides networks, optimisers, replay, RNG: counters, results, round so far.
    `round` counts the rounds played (every actor plays one episode per round), `credit` the learner steps
    owed to the replay ratio; `last_eval` is the learner step of the last evaluation (between rounds)."""

    learner_steps: int = 0
    env_steps: int = 0
    round: int = 0
    credit: float = 0.0
    wall_time: float = 0.0
    last_eval: float = -math.inf
    last_ckpt: int = 0
    evaluations: list = field(default_factory=list)
    teacher_returns: list | None = None
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
        print(f"notice: paper-size networks take ~1 s per learner step on 2 CPU cores; use {CPU_PRESET}")
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
    if not 0.0 <= args.alpha <= 1.0 or args.learn_alpha and not 0.0 < args.alpha < 1.0:
        fail(f"--alpha {args.alpha} is out of range; use [0, 1] ((0, 1) with --learn-alpha; paper: 0.5)")
    for name, least in AT_LEAST.items():
        if getattr(args, name) < least:
            fail(f"--{name.replace('_', '-')} {getattr(args, name)} is too small; use at least {least}")
    if args.buffer_size < args.num_envs * (args.n_step + 1):
        fail(f"--buffer-size {args.buffer_size} cannot hold n-step windows; use at least 10000")


# ==== 2. Environments and the teacher =====================================================================
def make_envs(env_id: str, num_envs: int):
    """Control-suite envs (shimmy) stepped in lockstep, observations flattened in alphabetical key order."""
    import gymnasium as gym
    import shimmy
    from dm_control import suite

    gym.register_envs(shimmy)
    tasks = {f"{d}_{t}": f"dm_control/{d}-{t}-v0" for d, t in suite.ALL_TASKS}
    if env_id not in tasks:
        fail(f"--env-id {env_id!r} is unknown; use a control-suite task <domain>_<task> such as cheetah_run")
    thunks = [lambda: gym.wrappers.FlattenObservation(gym.make(tasks[env_id])) for _ in range(num_envs)]
    return gym.vector.SyncVectorEnv(thunks, autoreset_mode=gym.vector.AutoresetMode.DISABLED)


def round_seeds(seed: int, round_idx: int, stream: int, n: int) -> list[int]:
    """Reset seeds of one round, a pure function of (seed, round, stream): resume needs no env state."""
    return [int(s) for s in np.random.SeedSequence([seed, round_idx, stream]).generate_state(n)]


def load_teacher(args: Args, obs_dim: int, act_dim: int, device):
    """The exported teacher π_b (torch.export program), checked against the env's sizes."""
    path = args.teacher
    if path is None:
        entries = []
        with contextlib.suppress(DatasetError):
            entries = [e for e in zoo_policies(args.env_id) if e["name"] == "middle"]
        if not entries:
            fail(f"no middle zoo policy for {args.env_id}; pass --teacher PATH (an exported policy .pt2)")
        path = os.path.join(ROOT, entries[0]["file"])
    if not os.path.isfile(path):
        problem = "is a directory" if os.path.isdir(path) else "not found"
        fail(f"--teacher {path} {problem}; pass an exported policy (.pt2), e.g. from zoo/")
    # torch.export's own report of a bad file is replaced by ours below.
    logging.getLogger("torch.export").setLevel(logging.ERROR)
    try:
        teacher = torch.export.load(path).module().to(device)
    except Exception as e:
        fail(f"--teacher {path} is not a readable exported policy ({type(e).__name__}); pass one, e.g. zoo/")
    try:
        mean, stddev = teacher(torch.zeros(2, obs_dim, device=device))
    except Exception as e:
        what = f"cannot act on {args.env_id}'s {obs_dim}-dim observations ({type(e).__name__})"
        fail(f"--teacher {path} {what}; pass a policy exported for {args.env_id}")
    if mean.shape != (2, act_dim) or stddev.shape != (2, act_dim):
        fail(f"--teacher {path} outputs {tuple(mean.shape[1:])} actions, {args.env_id} takes {act_dim}")
    return teacher


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
    """Categorical Q(s, a): logits over I atoms (Q = Σ softmax·atoms); actions are clipped to [-1, 1]."""

    def __init__(self, in_dim: int, num_atoms: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.torso = layer_norm_mlp(in_dim, hidden_sizes)
        self.head = nn.Linear(hidden_sizes[-1], num_atoms)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs.expand(*actions.shape[:-1], -1), actions.clamp(-1.0, 1.0)], -1)
        return fp32_linear(self.head, self.torso(x))  # [..., I], fp32 under --bf16 autocast


class Agent(nn.Module):
    """Every learned quantity (online and target networks, duals, the trade-off) in one state_dict."""

    def __init__(self, obs_dim: int, act_dim: int, args: Args):
        super().__init__()
        sizes = args.hidden_sizes
        self.policy, self.target_policy = (Policy(obs_dim, act_dim, sizes) for _ in range(2))
        self.critic, self.target_critic = (Critic(obs_dim + act_dim, args.num_atoms, sizes) for _ in range(2))
        # Duals live in log space behind softplus (Acme): temperatures η_1, η_2 (ls: one), α_μ, α_σ.
        num_temperatures = 2 if args.method == "dime" else 1
        eta = torch.full((num_temperatures,), inv_softplus(args.init_temperature))
        self.log_temperature = nn.Parameter(eta)
        self.log_alpha_mean = nn.Parameter(torch.full((act_dim,), args.init_log_alpha_mean))
        self.log_alpha_stddev = nn.Parameter(torch.full((act_dim,), args.init_log_alpha_stddev))
        logit = math.log(args.alpha / (1 - args.alpha)) if 0 < args.alpha < 1 else 0.0
        self.tradeoff_logit = nn.Parameter(torch.tensor(logit))
        # J(α)'s estimate of E_{s, a~π_i} Q: the actors' mean episode return of the latest round (run_round).
        self.register_buffer("policy_return", torch.tensor(0.0))
        self.update_targets()

    @torch.no_grad()
    def update_targets(self) -> None:
        """Hard copy online -> target (Table 3: every --target-update-period learner steps)."""
        self.target_policy.load_state_dict(self.policy.state_dict())
        self.target_critic.load_state_dict(self.critic.state_dict())

    def duals(self) -> list[nn.Parameter]:
        return [self.log_temperature, self.log_alpha_mean, self.log_alpha_stddev]


def make_optimizers(agent: Agent, args: Args) -> dict:
    """One optimiser per parameter group: policy, critic, duals, and the learned trade-off."""
    optimizers = {
        n: torch.optim.AdamW(getattr(agent, n).parameters(), args.lr, weight_decay=0) for n in NETWORKS
    }
    optimizers["duals"] = torch.optim.Adam(agent.duals(), args.dual_lr)
    if args.learn_alpha:
        optimizers["tradeoff"] = torch.optim.Adam([agent.tradeoff_logit], args.dual_lr)
    return optimizers


def compile_networks(agent: Agent) -> None:
    """torch.compile every network's forward in place (state_dict keys stay the same)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch")
    for net in (agent.policy, agent.target_policy, agent.critic, agent.target_critic):
        net.compile()


def inv_softplus(x: float) -> float:
    """θ such that softplus(θ) = x (initial value of a dual variable)."""
    return x + math.log(-math.expm1(-x))


def dual(param: torch.Tensor) -> torch.Tensor:
    """Positive dual variable from its log-space parameter (softplus + epsilon, Acme)."""
    return F.softplus(param) + MPO_FLOAT_EPSILON


def tradeoff(agent: Agent, args: Args) -> torch.Tensor:
    """The trade-off α: --alpha filled on the device (no host copy), or sigmoid of the learned logit."""
    logit = agent.tradeoff_logit
    return logit.sigmoid() if args.learn_alpha else torch.full_like(logit, args.alpha)


# ==== 4. Policy evaluation: C51 target (mixture over N target-policy actions, projection), critic loss ======
def c51_target(next_pmfs: torch.Tensor, returns: torch.Tensor, discounts: torch.Tensor, atoms: torch.Tensor):
    """Project the mixture of the N target pmfs, shifted by the n-step return, onto the support (C51).
    next_pmfs [N, B, I], returns [B], discounts [B], atoms [I] -> target pmfs [B, I]."""
    return categorical_l2_project(next_pmfs.mean(0), returns, discounts, atoms)


def critic_loss(logits: torch.Tensor, target_pmfs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the online logits [B, I] to the projected target pmfs [B, I]."""
    return -(target_pmfs * logits.log_softmax(-1)).sum(-1).mean()


# ==== 5. E-step: per-objective weights, temperature duals, KL diagnostic ===================================
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


# ==== 7. Policy objective: task and teacher, combined by DiME (eq. 7-8) or LS (eq. 6) ======================
def e_step(q_task, log_ratio, temperature, alpha, args: Args):
    """Weights [N, B] of the α-mixture of the improved policies, the temperature loss, and KL(q_k ‖ π_i) [K].
    q_task, log_ratio = log π_b(a|s) - log π_i(a|s): [N, B] on the sampled actions; temperature [K]."""
    alpha = alpha.detach()
    # LS: one E-step on the scalarised objective (eq. 6).
    if args.method == "ls":
        q = ((1 - alpha) * q_task + alpha * log_ratio)[..., None]
        epsilon = q.new_full((1,), args.epsilon)
        weights, temperature_loss = compute_weights_and_temperature_loss(q, epsilon, temperature)
        return weights[..., 0], temperature_loss, compute_nonparametric_kl(weights)
    # DiME: one E-step per objective. --fixed-eta2 holds η_2 = 1, so that q_2 ∝ π_i·π_b/π_i = π_b (eq. 8) and
    # only η_1 is learned. The bounds are filled on the device (no host copy per step).
    q = torch.stack([q_task, log_ratio], -1)
    epsilon_teacher = 0.0 if args.fixed_eta2 else args.epsilon_teacher
    epsilon = torch.stack([q.new_full((), args.epsilon), q.new_full((), epsilon_teacher)])
    if args.fixed_eta2:
        temperature = torch.stack([temperature[0], torch.ones_like(temperature[0])])
    weights, temperature_loss = compute_weights_and_temperature_loss(q, epsilon, temperature)
    # The α-mixture of q_1 and q_2 (eq. 7).
    mixture = (1 - alpha) * weights[..., 0] + alpha * weights[..., 1]
    return mixture, temperature_loss, compute_nonparametric_kl(weights)


class PolicyBatch(NamedTuple):
    """What the policy objective sees at the bootstrap states s_{t+n} of a minibatch (from learner_step)."""

    states: torch.Tensor  # [B, S]
    target_mean: torch.Tensor  # [B, D]: π_i = N(target_mean, target_stddev)
    target_stddev: torch.Tensor  # [B, D]
    sampled: torch.Tensor  # [N, B, D]: actions drawn from π_i
    q_task: torch.Tensor  # [N, B]: target-critic Q of the sampled actions
    log_ratio: torch.Tensor  # [N, B]: log π_b(a|s) - log π_i(a|s), the teacher objective's "Q" (eq. 6-8)


def policy_loss(agent: Agent, batch: PolicyBatch, args: Args) -> tuple[torch.Tensor, dict]:
    """MPO policy improvement at the batch's states: the E-step weights the N actions sampled from
    π_i = N(target_mean, target_stddev) per objective, the M-step fits the mixture. Returns the loss (with
    the duals' and the learned trade-off's) and its statistics."""
    alpha = tradeoff(agent, args)
    temperature = dual(agent.log_temperature)
    alpha_mean = dual(agent.log_alpha_mean)
    alpha_stddev = dual(agent.log_alpha_stddev)
    weights, temperature_loss, kl_q = e_step(batch.q_task, batch.log_ratio, temperature, alpha, args)
    mean, stddev = agent.policy(batch.states)
    cross_entropy = compute_cross_entropy_loss(
        batch.sampled, weights, mean, stddev, batch.target_mean, batch.target_stddev
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
    # The policy loss trains π_θ; the dual losses train η, α_μ and α_σ.
    loss_policy = cross_entropy + penalty_mean + penalty_stddev
    loss_dual = temperature_loss + loss_alpha_mean + loss_alpha_stddev
    loss = loss_policy + loss_dual
    # q_* and pi_stddev_*: Acme's diagnostics; η_1 and its E-step's KL relative to its bound.
    stats = {
        "policy_loss": loss_policy,
        "kl_mean": kl_mean_avg,
        "kl_stddev": kl_stddev_avg,
        "alpha_mean": alpha_mean.mean(),
        "alpha_stddev": alpha_stddev.mean(),
        "tradeoff": alpha,
        "log_ratio_mean": batch.log_ratio.mean(),
        "q_min": batch.q_task.min(),
        "q_max": batch.q_task.max(),
        "pi_stddev_min": stddev.min(),
        "pi_stddev_max": stddev.max(),
        "temperature_0": temperature[0],
        "kl_q_rel_0": kl_q[0] / args.epsilon,
    }
    # DiME's η_2 likewise; a fixed η_2 = 1 bounds nothing, so its KL is logged as it is.
    if args.method == "dime" and args.fixed_eta2:
        stats["temperature_1"] = torch.ones_like(temperature[1])
        stats["kl_q_1"] = kl_q[1]
    elif args.method == "dime":
        stats["temperature_1"] = temperature[1]
        stats["kl_q_rel_1"] = kl_q[1] / args.epsilon_teacher
    # The learned trade-off descends J(α) = α·(E[Q] - c) (Sec. 6.3), E[Q] the actors' latest mean return.
    if args.learn_alpha:
        stats["return_minus_threshold"] = agent.policy_return - args.return_threshold
        loss = loss + alpha * stats["return_minus_threshold"]
    return loss, stats


# ==== 7a. Replay on the device: 1-step transitions per actor, n-step returns built when sampled ===========
class Replay:
    """Ring buffer of [rows, E] transitions, float32 but for the bool flags "terminals" (a true end) and
    "ends" (an end or a cut). n-step windows never cross an episode end."""

    KEYS = ("obs", "actions", "rewards", "next_obs", "terminals", "ends")

    def __init__(self, capacity: int, num_envs: int, obs_dim: int, act_dim: int, device):
        self.rows = max(capacity // num_envs, 1)
        self.pos = 0
        self.full = False
        dims = {"obs": (obs_dim,), "actions": (act_dim,), "rewards": (), "next_obs": (obs_dim,)}
        self.data = {}
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
        returns = (alive * gamma ** steps[:, None].float() * d["rewards"][idx, e]).sum(0)  # [B]
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
        self.pos, self.full = saved["pos"], saved["full"]


# ==== 8. Learner step: one update of critic, policy, duals and trade-off ==================================
def learner_step(agent: Agent, optimizers: dict, replay: Replay, teacher, atoms, args: Args, gen) -> dict:
    """One gradient step on every parameter group; returns the statistics as tensors (no host sync)."""
    obs, actions, returns, discounts, states = replay.sample(args.batch_size, args.n_step, args.gamma, gen)
    # --bf16: matmuls in bfloat16 (heads, losses and weights stay fp32).
    with torch.autocast(obs.device.type, torch.bfloat16, enabled=args.bf16):
        # N actions from the target policy π_i at s_{t+n}, scored by both objectives.
        with torch.no_grad():
            target_mean, target_stddev = agent.target_policy(states)
            noise = torch.randn(args.num_samples, *target_mean.shape, device=states.device, generator=gen)
            sampled = target_mean + target_stddev * noise  # [N, B, D]
            next_pmfs = agent.target_critic(states, sampled).softmax(-1)  # [N, B, I]
            target_pmfs = c51_target(next_pmfs, returns, discounts, atoms)
            q_task = (next_pmfs * atoms).sum(-1)  # [N, B]
            # π_b in fp32 under --bf16, as the heads.
            with torch.autocast(states.device.type, enabled=False):
                teacher_mean, teacher_stddev = teacher(states)
            # log π_b(a|s) - log π_i(a|s): the teacher objective's "Q" (eq. 6-8).
            log_teacher = gaussian_log_prob(sampled, teacher_mean, teacher_stddev)
            log_ratio = log_teacher - gaussian_log_prob(sampled, target_mean, target_stddev)  # [N, B]
        batch = PolicyBatch(states, target_mean, target_stddev, sampled, q_task, log_ratio)
        loss, stats = policy_loss(agent, batch, args)
        stats["critic_loss"] = critic_loss(agent.critic(obs, actions), target_pmfs)
    stats["q_mean"] = batch.q_task.mean()
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    (loss + stats["critic_loss"]).backward()
    for name in NETWORKS:
        nn.utils.clip_grad_norm_(getattr(agent, name).parameters(), args.grad_clip)
    for opt in optimizers.values():
        opt.step()
    with torch.no_grad():
        for p in agent.duals():
            p.clamp_(min=MIN_LOG_DUAL)
        agent.tradeoff_logit.clamp_(-args.tradeoff_logit_bound, args.tradeoff_logit_bound)
    # Detached, so that no autograd graph is kept until the log; TensorBoard's names (α is a chart).
    return {("charts/" if k == "tradeoff" else "losses/") + k: v.detach() for k, v in stats.items()}


# ========================================================================================================
# The algorithm ends here: sections 1-8 above copy into other code as one block. Below is the harness
# (training loop, evaluation, logging, checkpoints, export): an algorithm change should not touch it.
# ========================================================================================================


# ==== 9. main: seeding, teacher, actors and learner =======================================================
class Run:
    """A run's directory (the checkpoint's on --resume), TensorBoard (wandb), progress bar, last-log clock."""

    def __init__(self, args: Args, state: TrainState):
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
        bar = dict(unit="env step", desc=args.env_id, dynamic_ncols=True, disable=None)
        self.progress = tqdm(total=args.total_env_steps, initial=state.env_steps, **bar)
        self.start = time.time() - state.wall_time
        # The rate and ETA count this process's steps over its time outside evaluations.
        self.first_steps = (state.learner_steps, state.env_steps)
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
            env_steps = state.env_steps
            env_steps_done = max(env_steps - self.first_steps[1], 1)
            env_steps_left = self.progress.total - env_steps
            learner_steps_left = env_steps_left * (step - self.first_steps[0]) / env_steps_done
            evaluations_left = learner_steps_left // self.eval_every
            seconds_per_evaluation = self.eval_seconds / max(self.evaluations, 1)
            eta = env_steps_left * seconds / env_steps_done + evaluations_left * seconds_per_evaluation
            rate = f"{sps:.1f} learner steps/s, ETA {eta / 60:.0f} min"
            print(f"env step {env_steps}/{self.progress.total}, learner step {step}: {rate}", flush=True)


@dataclass
class Learner:
    """What a learner step needs, and the metric tensors since the last log."""

    agent: Agent
    optimizers: dict
    replay: Replay
    teacher: nn.Module
    atoms: torch.Tensor
    gen: torch.Generator
    metrics: list = field(default_factory=list)


def main(args: Args, typed: frozenset[str] = frozenset()) -> dict:
    """Train and evaluate; `typed` names the flags given on the command line (checked against a --resume)."""
    with StopSignals() as stop:
        return train(args, typed, stop)


def train(args: Args, typed: frozenset[str], stop: "StopSignals") -> dict:
    """Seeding, actors, learner, the training loop (sections 1-8), the final evaluation and results."""
    # Evaluation renders nothing; set before dm_control loads.
    os.environ.setdefault("MUJOCO_GL", "disable")
    check_args(args)
    ckpt = load_checkpoint(args, typed) if args.resume else None
    args = ckpt["args"] if ckpt else args
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device, args = check_device(args)
    gen = torch.Generator(device).manual_seed(args.seed)
    envs = make_envs(args.env_id, args.num_envs)
    (obs_dim,), (act_dim,) = envs.single_observation_space.shape, envs.single_action_space.shape
    teacher = load_teacher(args, obs_dim, act_dim, device)
    state = TrainState(**ckpt["state"]) if ckpt else TrainState()
    # Measured once (a resumed run keeps them): the teacher's return, a line on the plots, and c from its
    # sampled actions, as an α = 1 student acts.
    if state.teacher_returns is None:
        print(f"teacher: evaluating ({args.eval_episodes} episodes)")
        state.teacher_returns = evaluate(teacher, args, 0, device, stream=2).tolist()
    if args.learn_alpha and args.return_threshold is None:
        sampled = evaluate(teacher, args, 0, device, stream=3, sample=True)
        args = dataclasses.replace(args, return_threshold=(1 - args.threshold_margin) * float(sampled.mean()))
    line = f"teacher: return {np.mean(state.teacher_returns):.1f}"
    print(line + (f"; threshold c = {args.return_threshold:.1f}" if args.learn_alpha else ""))
    agent = Agent(obs_dim, act_dim, args).to(device)
    if args.compile:
        compile_networks(agent)
    atoms = torch.linspace(args.v_min, args.v_max, args.num_atoms, device=device)
    replay = Replay(args.buffer_size, args.num_envs, obs_dim, act_dim, device)
    learner = Learner(agent, make_optimizers(agent, args), replay, teacher, atoms, gen)
    if ckpt:
        restore(ckpt, learner)
    stop.run = run = Run(args, state)
    checkpoint_every = args.eval_every if args.checkpoint_every is None else args.checkpoint_every
    while (state.round_actions or state.env_steps < args.total_env_steps) and not stop.signum:
        if not state.round_actions and state.learner_steps - state.last_eval >= args.eval_every:
            evaluate_and_log(agent, args, state, run)
        if checkpoint_every and state.learner_steps - state.last_ckpt >= checkpoint_every:
            save_checkpoint(run, args, learner, state)
        run_round(envs, learner, args, state, run, stop)
    # A stop during the loop: checkpoint the learner step reached, print the --resume line, exit.
    stop.end_loop(lambda: save_checkpoint(run, args, learner, state), state.learner_steps)
    # Before the final evaluation, which an extended (resumed) run would not make.
    if checkpoint_every:
        save_checkpoint(run, args, learner, state)
    evaluate_and_log(agent, args, state, run)
    state.wall_time = time.time() - run.start
    run.progress.close()
    run.writer.close()
    if args.save_model:
        export_policy(agent, args, os.path.join(run.dir, "policy.pt2"))
    return write_results(args, state, run.dir)


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
        resume = f"python {SCRIPT} --resume {os.path.join(self.run.dir, 'checkpoint.pt')}"
        line = f"{signal.Signals(self.signum).name}: stopped at learner step {step}; continue with: {resume}"
        print(line, file=sys.stderr)
        sys.exit(128 + self.signum)


def run_round(envs, learner: Learner, args: Args, state: TrainState, run: Run, stop: StopSignals) -> None:
    """Every actor plays one episode (lockstep, resets seeded by the round; the first end ends the round);
    learner steps interleave. A stop mid-episode returns after the current learner or env step; a resumed
    round re-executes its actions."""
    device = learner.atoms.device
    obs, _ = envs.reset(seed=round_seeds(args.seed, state.round, 0, args.num_envs))
    episode_return = torch.zeros(args.num_envs, device=device)
    done = False
    for executed in state.round_actions:
        obs, reward, *_ = envs.step(np.array(executed, np.float32))
        episode_return = episode_return + torch.as_tensor(reward, dtype=torch.float32, device=device)
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
            mean, stddev = learner.agent.policy(obs)
            noise = torch.randn(mean.shape, device=device, generator=learner.gen)
            actions = (mean + stddev * noise).clamp(-1.0, 1.0)
        executed = actions.cpu().numpy()
        # Diverged since the last log: stop before the physics does.
        if not np.isfinite(executed).all():
            check_finite(learner.agent, state.learner_steps, run.dir)
        state.round_actions.append(executed.tolist())
        next_obs, reward, terminated, truncated, _ = envs.step(executed)
        done = bool(np.any(terminated | truncated))
        rewards = torch.as_tensor(reward, dtype=torch.float32, device=device)
        transition = dict(obs=obs, actions=actions, rewards=rewards, terminals=torch.as_tensor(terminated))
        obs = torch.as_tensor(next_obs, dtype=torch.float32, device=device)
        learner.replay.add(**transition, next_obs=obs, ends=done)
        episode_return = episode_return + rewards
        state.env_steps += args.num_envs
        run.progress.update(args.num_envs)
        if state.env_steps >= max(args.learning_starts, args.num_envs * args.n_step):
            state.credit += args.num_envs * args.replay_ratio
    learner.agent.policy_return.fill_(episode_return.mean())
    run.writer.add_scalar("charts/episodic_return", episode_return.mean().item(), state.env_steps)
    state.round += 1
    state.round_actions = []


def learn(learner: Learner, args: Args, state: TrainState, run: Run) -> None:
    """One learner step (α held during --alpha-warmup-steps), the target update and the log when due."""
    warm_up = state.learner_steps < args.alpha_warmup_steps
    optimizers = {k: o for k, o in learner.optimizers.items() if k != "tradeoff" or not warm_up}
    inputs = (learner.agent, optimizers, learner.replay, learner.teacher, learner.atoms, args, learner.gen)
    learner.metrics.append(learner_step(*inputs))
    state.learner_steps += 1
    if state.learner_steps % args.target_update_period == 0:
        learner.agent.update_targets()
    if state.learner_steps % args.log_every == 0:
        run.log(learner.agent, learner.metrics, state)


# ==== 10. Evaluation ======================================================================================
@torch.no_grad()
def evaluate(policy, args: Args, round_idx: int, device, stream: int = 1, sample: bool = False) -> np.ndarray:
    """Per-episode returns of a policy's mean (`sample`: of actions drawn from it), clipped to [-1, 1];
    reset seeds and the sampling noise from (seed, round, stream)."""
    envs = make_envs(args.env_id, args.eval_episodes)
    seeds = round_seeds(args.seed, round_idx, stream, args.eval_episodes)
    obs, _ = envs.reset(seed=seeds)
    gen = torch.Generator(device).manual_seed(seeds[0])
    returns = np.zeros(args.eval_episodes)
    alive = np.ones(args.eval_episodes, bool)
    while alive.any():
        mean, stddev = policy(torch.as_tensor(obs, dtype=torch.float32, device=device))
        actions = mean + stddev * torch.randn(mean.shape, device=device, generator=gen) if sample else mean
        obs, reward, terminated, truncated, _ = envs.step(actions.clamp(-1.0, 1.0).cpu().numpy())
        returns += reward * alive
        alive &= ~(terminated | truncated)
    envs.close()
    return returns


def evaluate_and_log(agent: Agent, args: Args, state: TrainState, run: Run) -> None:
    """Evaluate the policy mean; the record holds the trade-off α at this step."""
    step, env_steps = state.learner_steps, state.env_steps
    start = time.time()
    check_finite(agent, step, run.dir)
    if step == 0:
        run.progress.write(f"step 0: evaluating the initial policy ({args.eval_episodes} episodes)")
    returns = evaluate(agent.policy, args, state.round, next(agent.parameters()).device)
    alpha = float(tradeoff(agent, args).detach())
    record = {"step": step, "env_steps": env_steps, "alpha": alpha, "returns": returns.tolist()}
    state.evaluations.append({**record, "mean": float(returns.mean())})
    run.progress.write(f"step {step} (env steps {env_steps}) α {alpha:.3f}: return {returns.mean():.1f}")
    run.writer.add_scalar("eval/episodic_return", returns.mean(), step)
    state.last_eval = step
    run.eval_seconds += time.time() - start
    run.evaluations += 1


def write_results(args: Args, state: TrainState, run_dir: str) -> dict:
    """results.json (docs/dime_finetune.md) with the teacher's return and the trade-off over time; curve.png:
    evaluation return against env steps with the teacher's return as a line (Fig. 3), and α over time."""
    from matplotlib.figure import Figure

    evals = state.evaluations
    last = evals[-1]
    teacher = state.teacher_returns
    results = {"algo": SCRIPT[:-3], "method": args.method, "env_id": args.env_id, "seed": args.seed}
    results.update(alpha=None if args.learn_alpha else args.alpha, evaluations=evals)
    results["final"] = {"alpha": last["alpha"], "mean": last["mean"], "std": float(np.std(last["returns"]))}
    results["teacher"] = {"path": args.teacher, "mean": float(np.mean(teacher)), "returns": teacher}
    results.update(return_threshold=args.return_threshold, learner_steps=state.learner_steps)
    results.update(env_steps=state.env_steps, wall_time_s=state.wall_time, args=dataclasses.asdict(args))
    results["learner_steps_per_second"] = state.learner_steps / max(state.wall_time, 1e-9)
    results["precision"] = "bf16 autocast, fp32 heads" if args.bf16 else "fp32"
    write_json(os.path.join(run_dir, "results.json"), results)
    env_steps = [e["env_steps"] for e in evals]
    fig = Figure(figsize=(5, 5), layout="tight")
    ax, ax_alpha = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    ax.plot(env_steps, [e["mean"] for e in evals], marker="o", label=args.method)
    ax.axhline(results["teacher"]["mean"], color="k", ls="--", label="teacher")
    ax.set(ylabel="episode return", title=f"dime_finetune {args.env_id}")
    ax.legend()
    ax_alpha.plot(env_steps, [e["alpha"] for e in evals])
    ax_alpha.set(xlabel="env steps", ylabel="trade-off α", ylim=(0, 1))
    fig.savefig(os.path.join(run_dir, "curve.png"), dpi=100)
    return results


# ==== 11. Run directory, checkpoints (atomic), resume, export =============================================
def write_json(path: str, obj) -> None:
    atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text(json.dumps(obj, indent=1)))


def atomic_write(path: str, write) -> None:
    """Write a temporary file beside `path` (same suffix) and rename it: a crash never leaves half a file."""
    tmp = os.path.join(os.path.dirname(path), f".tmp{os.getpid()}.{os.path.basename(path)}")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(run: Run, args: Args, learner: Learner, state: TrainState) -> None:
    """All --resume needs: networks, targets, duals, α, optimisers, replay, RNG, metrics, TrainState."""
    check_finite(learner.agent, state.learner_steps, run.dir)
    state.wall_time = time.time() - run.start
    state.last_ckpt = state.learner_steps
    ckpt = dict(script=SCRIPT, args=dataclasses.asdict(args), agent=learner.agent.state_dict())
    ckpt["optimizers"] = {k: o.state_dict() for k, o in learner.optimizers.items()}
    ckpt.update(replay=learner.replay.state_dict(), rng=learner.gen.get_state(), metrics=learner.metrics)
    ckpt["state"] = dataclasses.asdict(state)
    atomic_write(os.path.join(run.dir, "checkpoint.pt"), lambda f: torch.save(ckpt, f))


def load_checkpoint(args: Args, typed: frozenset[str] = frozenset()) -> dict:
    """A --resume checkpoint with the flags a resume may change; refuses bad files and clashing flags."""
    try:
        ckpt = torch.load(args.resume, map_location="cpu", weights_only=True)
    except Exception as e:
        fail(f"--resume {args.resume} is not a readable checkpoint ({type(e).__name__}); give a checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("script") != SCRIPT:
        fail(f"--resume {args.resume} was not written by {SCRIPT}; pass one of its own")
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
    learner.replay.load_state_dict(ckpt["replay"])
    learner.gen.set_state(ckpt["rng"])
    learner.metrics = [{k: v.to(learner.atoms.device) for k, v in m.items()} for m in ckpt.get("metrics", [])]


def export_policy(agent: Agent, args: Args, path: str) -> None:
    """torch.export of the policy: `torch.export.load(path).module()(obs)` -> (mean, stddev); meta.json."""
    policy = Policy(agent.policy.torso[0].in_features, agent.policy.mean.out_features, args.hidden_sizes)
    policy.load_state_dict(agent.policy.state_dict())
    example = torch.zeros(2, policy.torso[0].in_features)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(policy.cpu().eval(), (example,), dynamic_shapes=({0: batch},))
    meta = {"env_id": args.env_id, "obs_dim": example.shape[1], "act_dim": policy.mean.out_features}
    meta.update(hidden_sizes=list(args.hidden_sizes), script=SCRIPT)
    atomic_write(path, lambda f: torch.export.save(program, f, extra_files={"meta.json": json.dumps(meta)}))


if __name__ == "__main__":
    # The flags on the command line, even those given at their default (load_checkpoint).
    typed = frozenset(a.split("=")[0] for a in sys.argv[1:])
    main(tyro.cli(Args, description=__doc__.split("\n\n")[0]), typed)
