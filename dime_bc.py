# docs and experiment results: docs/dime_bc.md
"""Offline DiME (BC): policy improvement and behaviour cloning as two objectives (eq. 11, Sec. 5.2, 6.2).

Policy iteration on a fixed dataset D. A C51 critic evaluates π_i; the E-step of the RL objective reweights
N actions sampled from π_i by exp(Q/η) (eq. 38) with a learned temperature (dual, ε = 0.5); the BC objective's
"E-step" is the dataset action itself. The M-step fits π_θ to the mixture, with Acme's decoupled trust region:
    loss = (1-α)·Σ_i w_i·(-log π̃(a_i|s)) + α·(-log π̃(a_D|s)) + KL penalties
α = 1 is behaviour cloning through the M-step; α = 0 is offline MPO; the paper's fixed choice is 0.45.

Decisions the paper leaves open (docs/dime_bc.md, "Implementation details"):
- One target-critic pass per learner step, as in Acme's DMPO learner (an E-step on s_t would need a second
  one): the N actions sampled at the bootstrap state s' = s_{t+k} of each n-step transition give both the C51
  mixture target and the E-step; the BC term, at the same states (eq. 11 mixes both at one state), uses the
  dataset action at s' (RL Unplugged's SARSA tuples), which an s' at the episode's end lacks (≤ n/1000 of
  the states of 1000-step episodes): those states are left out of the policy loss.
- The dataset lives on the device as precomputed n-step transitions (common.datasets.nstep_transitions);
  minibatches are drawn there with a seeded torch.Generator: no host/device copy per step.
- Evaluation runs --eval-episodes episodes of the policy mean (clipped to [-1, 1]) in lockstep with reset
  seeds derived from (seed, learner step), so `--resume` reproduces an uninterrupted run exactly.
Shape letters: B batch, N sampled actions per state, D action dims, S observation dims, I atoms.
"""

import contextlib
import ctypes
import dataclasses
import functools
import io
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
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from tqdm import tqdm

from common.c51 import categorical_l2_project
from common.datasets import DatasetError, check_env, discounted_returns, load_dataset, nstep_transitions

# Acme's: the ε added to every softplus dual, the duals' lower clamp (_MIN_LOG_TEMPERATURE), and the
# Gaussian head's stddev at initialisation and its floor.
MPO_FLOAT_EPSILON = 1e-8
MIN_LOG_DUAL = -18.0
POLICY_INIT_SCALE = 0.7
POLICY_MIN_SCALE = 1e-6
SCRIPT = os.path.basename(__file__)
# Chosen on cartpole_swingup and cheetah_run (docs/results.md, "The CPU preset").
CPU_PRESET = (
    "--hidden-sizes 256 256 256 --batch-size 256 --num-samples 20 --bf16"
    " --total-steps 20000 --eval-every 5000 --eval-episodes 20"
)
RESUME_OVERRIDES = {"total_steps", "checkpoint_every", "eval_every", "resume", "cuda", "track", "save_model"}
RESUME_OVERRIDES |= {"log_every", "compile", "bf16"}
AT_LEAST = dict(batch_size=1, num_samples=1, n_step=1, num_atoms=2, eval_episodes=1, total_steps=1)


# ==== 1. Args ===========================================================================================
@dataclass
class Args:
    exp_name: str = SCRIPT[: -len(".py")]
    """the name of this experiment (part of the run directory name)"""
    seed: int = 1
    """seed of python, numpy, torch and the evaluation environments"""
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
    """export the policy (torch.export, loads without this file) to <run>/policy.pt2"""
    checkpoint_every: int | None = None
    """write <run>/checkpoint.pt every this many learner steps (default: at every evaluation); 0 = never"""
    resume: str | None = None
    """a checkpoint.pt to continue exactly (same flags; --total-steps may grow)"""
    log_every: int = 100
    """log losses every this many learner steps (the learner's only device->host copy)"""
    compile: bool = False
    """torch.compile the networks (faster steps after some seconds of compilation)"""
    bf16: bool = False
    """bfloat16 torsos (heads, weights, losses in fp32): ~2x faster where bfloat16 is native (Ampere or later
    GPUs, CPUs with avx512_bf16 or AMX); ignored with a notice elsewhere, where fp32 is faster"""

    # Algorithm specific arguments

    env_id: str = "cheetah_run"
    """control-suite task <domain>_<task> (builds the zoo dataset) or a gymnasium id, e.g. FrankaKitchen-v1"""
    env_kwargs: str | None = None
    """gymnasium.make keywords (JSON); default: the Minari dataset's own"""
    dataset: str = "zoo"
    """'zoo' (built locally from zoo/ policies), an .hdf5 file, a Minari id or directory, or RLU shards"""
    alpha: float | None = None
    """(required) weight of the BC objective in [0, 1] (eq. 11); paper: 0.45"""
    total_steps: int = 1_000_000
    """learner steps (Table 3)"""
    batch_size: int = 512
    """transitions per learner step (Table 3)"""
    hidden_sizes: tuple[int, ...] = (1024, 1024, 1024, 1024, 1024, 512)
    """hidden layers of policy and critic (Table 3); CPU preset: 256 256 256"""
    num_samples: int = 30
    """N: actions sampled per state for the E-step and the C51 mixture target (Table 3)"""
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
    epsilon: float = 0.5
    """ε: KL bound of the RL objective's E-step (Table 4, RL Unplugged)"""
    epsilon_mean: float = 0.0025
    """ε_μ: M-step KL bound on the policy mean (Table 3)"""
    epsilon_stddev: float = 1e-5
    """ε_σ: M-step KL bound on the policy stddev (Table 3)"""
    init_temperature: float = 10.0
    """initial temperature η (Table 3)"""
    init_log_alpha_mean: float = 1.0
    """initial softplus-space value of the mean multiplier α_μ (Acme TF DMPO)"""
    init_log_alpha_stddev: float = 10.0
    """same for α_σ (Acme TF DMPO)"""
    lr: float = 1e-4
    """Adam learning rate of policy and critic (Table 3)"""
    dual_lr: float = 1e-2
    """Adam learning rate of the dual variables (Table 3)"""
    weight_decay: float = 0.01
    """decoupled (AdamW) weight decay: lr·decay = 1e-6 per step (Table 4)"""
    target_update_period: int = 100
    """learner steps between hard copies into the target networks (Table 3)"""
    grad_clip: float = 40.0
    """global gradient-norm clip of policy and critic"""
    eval_every: int = 10_000
    """evaluate in the environment every this many learner steps"""
    eval_episodes: int = 10
    """episodes per evaluation"""


@dataclass
class TrainState:
    """A checkpoint's counters and results besides the Learner; `diagnostics`: the last logged averages."""

    learner_steps: int = 0
    wall_time: float = 0.0
    evaluations: list = field(default_factory=list)
    diagnostics: dict = field(default_factory=dict)


def fail(message: str) -> None:
    """User error: one clear line on stderr and a non-zero exit."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(args: Args) -> None:
    """Validate flags once, naming the flag, the value received and the fix."""
    if args.alpha is None and not args.resume:
        fail("--alpha is required: the weight of the BC objective in [0, 1] (paper: 0.45; 1 = BC)")
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        fail(f"--alpha {args.alpha} is out of range; use a value in [0, 1] (paper: 0.45)")
    for name, least in AT_LEAST.items():
        if getattr(args, name) < least:
            fail(f"--{name.replace('_', '-')} {getattr(args, name)} is too small; use at least {least}")
    if not args.v_min < args.v_max:
        fail(f"--v-min {args.v_min} must be below --v-max {args.v_max}")


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


def native_bf16(device: torch.device) -> bool:
    """bfloat16 matmuls in hardware (Ampere or later GPUs, CPUs with avx512_bf16 or AMX), not emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def check_finite(agent: nn.Module, step: int, run_dir: str) -> None:
    """Divergence guard before a log, an evaluation or a checkpoint: non-finite parameters stop the run."""
    if not all(torch.isfinite(p).all() for p in agent.parameters()):
        kept = f"the last good checkpoint is kept in {run_dir}"
        fail(f"training diverged by learner step {step} (parameters not finite); {kept}; lower --lr")


# ==== 2. Environment and dataset ==========================================================================
@functools.cache
def gymnasium_id(env_id: str) -> str:
    """The gymnasium id of --env-id: <domain>_<task> (control suite, through shimmy) or registered; cached."""
    import gymnasium as gym
    import shimmy
    from dm_control import suite

    gym.register_envs(shimmy)
    tasks = {f"{d}_{t}": f"dm_control/{d}-{t}-v0" for d, t in suite.ALL_TASKS}
    if env_id not in tasks:
        # Its import prints a notice on old Adroit envs.
        with contextlib.redirect_stderr(io.StringIO()):
            import gymnasium_robotics
        gym.register_envs(gymnasium_robotics)
    if env_id not in tasks and env_id not in gym.registry:
        fail(f"--env-id {env_id!r} is unknown; pass a control-suite task (cheetah_run) or a gymnasium id")
    return tasks.get(env_id, env_id)


def make_envs(env_id: str, num_envs: int, env_kwargs: str | None = None):
    """Envs stepped in lockstep, observations flattened in alphabetical key order, made with --env-kwargs."""
    import gymnasium as gym

    name = gymnasium_id(env_id)
    try:
        kwargs = json.loads(env_kwargs or "{}")
        make = lambda: gym.wrappers.FlattenObservation(gym.make(name, **kwargs))
        return gym.vector.SyncVectorEnv([make] * num_envs, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    except (ValueError, TypeError) as e:
        fail(f"--env-kwargs {env_kwargs} do not fit {env_id} ({e}); pass a JSON object of make() keywords")


def load_data(args: Args, device) -> tuple[dict, dict, tuple[int, int], str | None]:
    """n-step transitions on the device (docs/datasets.md), their summary, env sizes, env kwargs for eval."""
    # A typo in --env-id fails before any dataset work.
    gymnasium_id(args.env_id)
    try:
        ds = load_dataset(args.dataset, args.env_id, seed=0)
        spec = ds.env_spec
        env_kwargs = args.env_kwargs
        if spec and spec["id"] != args.env_id:
            raise DatasetError(f"{ds.source} was recorded on {spec['id']}; pass --env-id {spec['id']}")
        if spec and env_kwargs is None:
            env_kwargs = json.dumps({**spec["kwargs"], "max_episode_steps": spec["max_episode_steps"]})
        envs = make_envs(args.env_id, 1, env_kwargs)
        (obs_dim,), (act_dim,) = envs.single_observation_space.shape, envs.single_action_space.shape
        check_env(ds, args.env_id, obs_dim, act_dim)
        data = nstep_transitions(ds, args.n_step, args.gamma)
        data["mc_returns"] = discounted_returns(ds, args.gamma)
    except DatasetError as e:
        fail(str(e))
    info = ds.summary()
    print(f"dataset {info['source']}: {info['episodes']} episodes, {info['transitions']} transitions")
    data = {k: torch.as_tensor(v, device=device) for k, v in data.items()}
    summary = {k: info[k] for k in ("source", "transitions", "episodes", "return_min", "return_max")}
    return data, summary, (obs_dim, act_dim), env_kwargs


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
    """Every learned quantity (online and target networks, dual variables) in one state_dict."""

    def __init__(self, obs_dim: int, act_dim: int, args: Args):
        super().__init__()
        sizes = args.hidden_sizes
        self.policy, self.target_policy = (Policy(obs_dim, act_dim, sizes) for _ in range(2))
        self.critic, self.target_critic = (Critic(obs_dim + act_dim, args.num_atoms, sizes) for _ in range(2))
        # Duals live in log space behind softplus (Acme): temperature η, per-dimension α_μ, α_σ.
        self.log_temperature = nn.Parameter(torch.tensor(inv_softplus(args.init_temperature)))
        self.log_alpha_mean = nn.Parameter(torch.full((act_dim,), args.init_log_alpha_mean))
        self.log_alpha_stddev = nn.Parameter(torch.full((act_dim,), args.init_log_alpha_stddev))
        self.update_targets()

    @torch.no_grad()
    def update_targets(self) -> None:
        """Hard copy online -> target (Table 3: every --target-update-period learner steps)."""
        self.target_policy.load_state_dict(self.policy.state_dict())
        self.target_critic.load_state_dict(self.critic.state_dict())

    def duals(self) -> list[nn.Parameter]:
        return [self.log_temperature, self.log_alpha_mean, self.log_alpha_stddev]


def make_optimizers(agent: Agent, args: Args) -> dict:
    """One optimiser per parameter group, as in Acme's MPO learners: policy, critic, duals."""
    adamw = {
        n: torch.optim.AdamW(getattr(agent, n).parameters(), args.lr, weight_decay=args.weight_decay)
        for n in ("policy", "critic")
    }
    return {**adamw, "duals": torch.optim.Adam(agent.duals(), args.dual_lr)}


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


# ==== 4. Policy evaluation: C51 target (mixture over N target-policy actions, projection), critic loss ======
def c51_target(next_pmfs: torch.Tensor, returns: torch.Tensor, discounts: torch.Tensor, atoms: torch.Tensor):
    """Project the mixture of the N target pmfs, shifted by the n-step return, onto the support (C51).
    next_pmfs [N, B, I], returns [B], discounts [B], atoms [I] -> target pmfs [B, I]."""
    return categorical_l2_project(next_pmfs.mean(0), returns, discounts, atoms)


def critic_loss(logits: torch.Tensor, target_pmfs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the online logits [B, I] to the projected target pmfs [B, I]."""
    return -(target_pmfs * logits.log_softmax(-1)).sum(-1).mean()


# ==== 5. E-step: sample weights, temperature dual, KL diagnostic ===========================================
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


# ==== 7. Policy objective: DiME (BC), eq. 11 ==============================================================
class PolicyBatch(NamedTuple):
    """What the policy objective sees at the bootstrap states s' of a minibatch (built by learner_step)."""

    states: torch.Tensor  # [B, S]
    dataset_actions: torch.Tensor  # [B, D]: a', the dataset action at s'
    valid: torch.Tensor  # [B]: 1 where a' exists (the window did not reach the episode's end)
    target_mean: torch.Tensor  # [B, D]: π_i = N(target_mean, target_stddev)
    target_stddev: torch.Tensor  # [B, D]
    sampled: torch.Tensor  # [N, B, D]: actions drawn from π_i
    q_sampled: torch.Tensor  # [N, B]: target-critic Q of the sampled actions
    q_dataset: torch.Tensor  # [B]: target-critic Q of a'


def bc_objective_weights(q_sampled: torch.Tensor, q_dataset: torch.Tensor, args: Args) -> torch.Tensor:
    """The BC objective's E-step: all its mass on the dataset action (eq. 11, second term). -> [B]"""
    return torch.ones_like(q_dataset)


def policy_loss(agent: Agent, batch: PolicyBatch, args: Args) -> tuple[torch.Tensor, dict]:
    """DiME at the batch's states: the RL objective's E-step weights the N actions sampled from
    π_i = N(target_mean, target_stddev), the BC objective's the dataset action; the M-step fits their
    α-mixture (eq. 11); a state without a dataset action (`valid` 0, ≤ n/1000) weighs 0 in the mean over B."""
    temperature = dual(agent.log_temperature)
    alpha_mean = dual(agent.log_alpha_mean)
    alpha_stddev = dual(agent.log_alpha_stddev)
    weights, temperature_loss = compute_weights_and_temperature_loss(
        batch.q_sampled, args.epsilon, temperature
    )
    bc_weights = bc_objective_weights(batch.q_sampled, batch.q_dataset, args)
    actions = torch.cat([batch.sampled, batch.dataset_actions[None]])  # [N + 1, B, D]
    # The two objectives' E-step distributions over the N + 1 actions, mixed by α (eq. 11).
    mixture = torch.cat([(1.0 - args.alpha) * weights, args.alpha * bc_weights[None]]) * batch.valid
    mean, stddev = agent.policy(batch.states)
    cross_entropy = compute_cross_entropy_loss(
        actions, mixture, mean, stddev, batch.target_mean, batch.target_stddev
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
    stats = {
        "policy_loss": loss_policy,
        "kl_mean": kl_mean_avg,
        "kl_stddev": kl_stddev_avg,
        "alpha_mean": alpha_mean.mean(),
        "alpha_stddev": alpha_stddev.mean(),
        "temperature": temperature,
        "kl_q_rel": compute_nonparametric_kl(weights) / args.epsilon,
        **offline_diagnostics(batch, bc_weights, stddev),
    }
    return loss_policy + loss_dual, stats


@torch.no_grad()
def offline_diagnostics(batch: PolicyBatch, data_weights: torch.Tensor, stddev: torch.Tensor) -> dict:
    """Acme's learner diagnostics: Q of the N samples; over the valid rows, the dataset action's advantage
    A = Q(s, a_D) - mean_i Q(s, a_i) and its weight w: shares below 0.1 and above 10, ESS (Σw)²/(n·Σw²)
    (DiME (BC)'s w = 1 reads 0, 0, 1: kept so that every offline run logs the same keys); π's stddev."""
    valid = batch.valid > 0
    n = valid.sum().clamp(min=1)
    advantage = batch.q_dataset - batch.q_sampled.mean(0)
    advantage_mean = (advantage * valid).sum() / n
    w = data_weights * valid
    return {
        "q_min": batch.q_sampled.min(),
        "q_max": batch.q_sampled.max(),
        "advantage_mean": advantage_mean,
        "advantage_std": (((advantage - advantage_mean) ** 2 * valid).sum() / n).sqrt(),
        "advantage_min": advantage.masked_fill(~valid, math.inf).min(),
        "advantage_max": advantage.masked_fill(~valid, -math.inf).max(),
        "weight_below_0.1": ((data_weights < 0.1) & valid).sum() / n,
        "weight_above_10": ((data_weights > 10) & valid).sum() / n,
        "weight_ess": w.sum() ** 2 / (n * (w**2).sum()).clamp(min=1e-12),
        "pi_stddev_min": stddev.min(),
        "pi_stddev_max": stddev.max(),
        "pi_stddev_mean": stddev.mean(),
    }


# ==== 8. Learner step: one update of critic, policy and duals =============================================
def sample_batch(data: dict, batch_size: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A minibatch of n-step SARSA tuples (s, a, R, γ^k·Π d, s', a', a' exists), drawn on the device."""
    idx = torch.randint(0, len(data["returns"]), (batch_size,), device=data["returns"].device, generator=gen)
    keys = "observations actions returns discounts next_observations next_actions next_action_valid".split()
    return tuple(data[k][idx] for k in keys)


def learner_step(agent: Agent, optimizers: dict, data: dict, atoms: torch.Tensor, args: Args, gen) -> dict:
    """One gradient step on every parameter group; returns the statistics as tensors (no host sync)."""
    obs, actions, returns, discounts, next_obs, next_actions, valid = sample_batch(data, args.batch_size, gen)
    # --bf16: matmuls in bfloat16 (heads, losses and weights stay fp32).
    with torch.autocast(obs.device.type, torch.bfloat16, enabled=args.bf16):
        # N actions from the target policy π_i at s' and the dataset action a', valued by the target critic.
        with torch.no_grad():
            target_mean, target_stddev = agent.target_policy(next_obs)
            noise = torch.randn(args.num_samples, *target_mean.shape, device=obs.device, generator=gen)
            sampled = target_mean + target_stddev * noise  # [N, B, D]
            candidates = torch.cat([sampled, next_actions[None]])  # [N + 1, B, D]
            pmfs = agent.target_critic(next_obs, candidates).softmax(-1)  # [N + 1, B, I]
            target_pmfs = c51_target(pmfs[:-1], returns, discounts, atoms)
            q_values = (pmfs * atoms).sum(-1)  # [N + 1, B]
        q_sampled = q_values[:-1]
        q_dataset = q_values[-1]
        batch = PolicyBatch(
            next_obs, next_actions, valid.float(), target_mean, target_stddev, sampled, q_sampled, q_dataset
        )
        loss, stats = policy_loss(agent, batch, args)
        stats["critic_loss"] = critic_loss(agent.critic(obs, actions), target_pmfs)
    stats["q_mean"] = batch.q_sampled.mean()
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    (loss + stats["critic_loss"]).backward()
    for name in ("policy", "critic"):
        nn.utils.clip_grad_norm_(getattr(agent, name).parameters(), args.grad_clip)
    for opt in optimizers.values():
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


# ==== 9. main: seeding, dataset, training loop ============================================================
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
        bar = dict(unit="step", desc=args.env_id, dynamic_ncols=True, disable=None)
        self.progress = tqdm(total=args.total_steps, initial=state.learner_steps, **bar)
        self.start = time.time() - state.wall_time
        # The rate and ETA count this process's learner steps over its time outside evaluations.
        self.first_step = state.learner_steps
        self.clock = time.time()
        self.eval_seconds = 0.0
        self.evaluations = 0
        self.eval_every = args.eval_every

    def log(self, agent: Agent, metrics: list[dict], step: int) -> dict:
        """Average the metric tensors since the last log with one device->host copy; returns the averages."""
        check_finite(agent, step, self.dir)
        keys = list(metrics[0])
        values = torch.stack([torch.stack([m[k] for m in metrics]).mean() for k in keys]).tolist()
        metrics.clear()
        for k, v in zip(keys, values):
            self.writer.add_scalar(k, v, step)
        sps = (step - self.first_step) / max(time.time() - self.clock - self.eval_seconds, 1e-9)
        self.writer.add_scalar("charts/SPS", sps, step)
        if self.progress.disable:
            evaluations_left = self.progress.total // self.eval_every - step // self.eval_every
            seconds_per_evaluation = self.eval_seconds / max(self.evaluations, 1)
            eta = (self.progress.total - step) / max(sps, 1e-9) + evaluations_left * seconds_per_evaluation
            print(
                f"step {step}/{self.progress.total}: {sps:.1f} learner steps/s, ETA {eta / 60:.0f} min",
                flush=True,
            )
        return dict(zip(keys, values))


@dataclass
class Learner:
    """What a learner step needs, and the metric tensors since the last log."""

    agent: Agent
    optimizers: dict
    data: dict
    atoms: torch.Tensor
    gen: torch.Generator
    metrics: list = field(default_factory=list)


def main(args: Args, typed: frozenset[str] = frozenset()) -> dict:
    """Train and evaluate; `typed` names the flags given on the command line (checked against a --resume)."""
    with StopSignals() as stop:
        return train(args, typed, stop)


def train(args: Args, typed: frozenset[str], stop: "StopSignals") -> dict:
    """Seeding, dataset, networks, the training loop (sections 1-8), the final evaluation and results."""
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
    data, dataset_info, (obs_dim, act_dim), env_kwargs = load_data(args, device)
    args = dataclasses.replace(args, env_kwargs=env_kwargs)
    agent = Agent(obs_dim, act_dim, args).to(device)
    if args.compile:
        compile_networks(agent)
    atoms = torch.linspace(args.v_min, args.v_max, args.num_atoms, device=device)
    learner = Learner(agent, make_optimizers(agent, args), data, atoms, gen)
    state = restore(ckpt, learner) if ckpt else TrainState()
    stop.run = run = Run(args, state)
    checkpoint_every = args.eval_every if args.checkpoint_every is None else args.checkpoint_every
    # A checkpoint comes after the evaluation of its step.
    if not state.evaluations:
        evaluate_and_log(agent, args, state, run, data, atoms)
    while state.learner_steps < args.total_steps and not stop.signum:
        learner.metrics.append(learner_step(agent, learner.optimizers, data, atoms, args, gen))
        state.learner_steps = step = state.learner_steps + 1
        if step % args.target_update_period == 0:
            agent.update_targets()
        if step % args.log_every == 0:
            state.diagnostics = run.log(agent, learner.metrics, step)
        if step % args.eval_every == 0:
            evaluate_and_log(agent, args, state, run, data, atoms)
        if checkpoint_every and (step % checkpoint_every == 0 or step == args.total_steps):
            save_checkpoint(run, args, learner, state)
        run.progress.update(1)
    # A stop during the loop: checkpoint the learner step reached, print the --resume line, exit.
    stop.end_loop(lambda: save_checkpoint(run, args, learner, state), state.learner_steps)
    # After the last checkpoint, so that a longer --resume does not repeat it.
    if args.total_steps % args.eval_every:
        evaluate_and_log(agent, args, state, run, data, atoms)
    state.wall_time = time.time() - run.start
    run.progress.close()
    run.writer.close()
    if args.save_model:
        export_policy(agent, args, os.path.join(run.dir, "policy.pt2"))
    return write_results(args, state, run.dir, dataset_info)


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


# ==== 10. Evaluation ======================================================================================
def d4rl_score(info: dict) -> np.ndarray | None:
    """D4RL's metric per env (App. D.2): Kitchen's sub-tasks done (0-4), AntMaze's goal reached; else None."""
    if "episode_task_completions" in info:
        return np.array([len(done) for done in info["episode_task_completions"]], float)
    if "success" in info:
        return info["success"].astype(float)
    return None


@torch.no_grad()
def evaluate(agent: Agent, args: Args, step: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns of the clipped policy mean, D4RL scores (best in the episode); seeds from (seed, step)."""
    n = args.eval_episodes
    device = next(agent.parameters()).device
    envs = make_envs(args.env_id, n, args.env_kwargs)
    obs, _ = envs.reset(seed=[int(s) for s in np.random.SeedSequence([args.seed, step]).generate_state(n)])
    returns = np.zeros(n)
    scores = np.zeros(n)
    alive = np.ones(n, bool)
    scored = False
    while alive.any():
        actions = agent.policy(torch.as_tensor(obs, dtype=torch.float32, device=device))[0]
        obs, reward, terminated, truncated, info = envs.step(actions.clamp(-1.0, 1.0).cpu().numpy())
        returns += reward * alive
        score = d4rl_score(info)
        if score is not None:
            scores = np.where(alive, np.maximum(scores, score), scores)
            scored = True
        alive &= ~(terminated | truncated)
    envs.close()
    return returns, scores if scored else None


@torch.no_grad()
def critic_rank_correlation(critic: nn.Module, data: dict, atoms: torch.Tensor, rows: int = 4096) -> float:
    """Spearman ρ of the critic's Q(s_t, a_t) and the Monte-Carlo return G_t over evenly spaced rows."""
    size = len(data["returns"])
    idx = torch.linspace(0, size - 1, min(rows, size), device=atoms.device).long()
    q = (critic(data["observations"][idx], data["actions"][idx]).softmax(-1) * atoms).sum(-1)
    ranks = torch.stack([x.argsort().argsort().float() for x in (q, data["mc_returns"][idx])])
    return float(torch.corrcoef(ranks)[0, 1])


def evaluate_and_log(agent: Agent, args: Args, state: TrainState, run: Run, data: dict, atoms) -> None:
    """Evaluate the policy; the record also holds the critic's rank check and the last logged diagnostics."""
    step = state.learner_steps
    start = time.time()
    check_finite(agent, step, run.dir)
    if step == 0:
        run.progress.write(f"step 0: evaluating the initial policy ({args.eval_episodes} episodes)")
    returns, scores = evaluate(agent, args, step)
    record = {"step": step, "alpha": args.alpha, "returns": returns.tolist(), "mean": float(returns.mean())}
    record.update(critic_rank_corr=critic_rank_correlation(agent.critic, data, atoms))
    record.update(diagnostics=state.diagnostics)
    line = f"step {step}: return {returns.mean():.1f} ± {returns.std():.1f}"
    if scores is not None:
        record.update(d4rl_scores=scores.tolist(), d4rl_score=float(scores.mean()))
        line += f", D4RL score {scores.mean():.2f}"
    state.evaluations.append(record)
    run.progress.write(line)
    for key in ("mean", "d4rl_score", "critic_rank_corr"):
        if key in record:
            run.writer.add_scalar(f"eval/{dict(mean='episodic_return').get(key, key)}", record[key], step)
    run.eval_seconds += time.time() - start
    run.evaluations += 1


def write_results(args: Args, state: TrainState, run_dir: str, dataset_info: dict) -> dict:
    """results.json (fields: docs/<script>.md, Outputs) and curve.png (returns against learner steps)."""
    from matplotlib.figure import Figure

    evals = state.evaluations
    last = evals[-1]
    final = {"alpha": args.alpha, "mean": last["mean"], "std": float(np.std(last["returns"]))}
    final.update({"d4rl_score": last["d4rl_score"]} if "d4rl_score" in last else {})
    results = dict(algo=SCRIPT[:-3], env_id=args.env_id, seed=args.seed, dataset=dataset_info)
    results.update(alpha=args.alpha, evaluations=evals, final=final, learner_steps=state.learner_steps)
    results.update(wall_time_s=state.wall_time, args=dataclasses.asdict(args))
    results["learner_steps_per_second"] = state.learner_steps / max(state.wall_time, 1e-9)
    results["precision"] = "bf16 autocast, fp32 heads" if args.bf16 else "fp32"
    write_json(os.path.join(run_dir, "results.json"), results)
    steps = [e["step"] for e in evals]
    mean, std = (np.array([f(e["returns"]) for e in evals]) for f in (np.mean, np.std))
    fig = Figure(figsize=(5, 3.5), layout="tight")
    ax = fig.subplots()
    ax.plot(steps, mean, marker="o")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="learner step", ylabel="episode return", title=f"{SCRIPT} {args.env_id}, α = {args.alpha}")
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
    """Everything needed to continue exactly: networks, targets, duals, optimisers, RNG, the TrainState."""
    check_finite(learner.agent, state.learner_steps, run.dir)
    state.wall_time = time.time() - run.start
    ckpt = dict(script=SCRIPT, args=dataclasses.asdict(args), agent=learner.agent.state_dict())
    ckpt["optimizers"] = {k: o.state_dict() for k, o in learner.optimizers.items()}
    ckpt.update(rng=learner.gen.get_state(), metrics=learner.metrics, state=dataclasses.asdict(state))
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


def restore(ckpt: dict, learner: Learner) -> TrainState:
    """Load a checkpoint into the Learner in place (networks, optimisers, RNG, metrics); returns its state."""
    try:
        learner.agent.load_state_dict(ckpt["agent"])
    except RuntimeError as e:
        missing = str(e).splitlines()[-1].strip()
        fail(f"--resume: the checkpoint's parameters do not fit this script ({missing}); start a new run")
    for k, opt in learner.optimizers.items():
        opt.load_state_dict(ckpt["optimizers"][k])
    learner.gen.set_state(ckpt["rng"])
    # The checkpoint was read onto the CPU; its metrics follow the networks, as the optimisers' states do.
    learner.metrics = [{k: v.to(learner.atoms.device) for k, v in m.items()} for m in ckpt["metrics"]]
    return TrainState(**ckpt["state"])


def export_policy(agent: Agent, args: Args, path: str) -> None:
    """torch.export of the policy: `torch.export.load(path).module()(obs)` -> (mean, stddev); meta.json."""
    policy = Policy(agent.policy.torso[0].in_features, agent.policy.mean.out_features, args.hidden_sizes)
    policy.load_state_dict(agent.policy.state_dict())
    example = torch.zeros(2, policy.torso[0].in_features)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(policy.cpu().eval(), (example,), dynamic_shapes=({0: batch},))
    meta = {"env_id": args.env_id, "obs_dim": example.shape[1], "act_dim": policy.mean.out_features}
    meta.update(alpha=args.alpha, hidden_sizes=list(args.hidden_sizes), script=SCRIPT)
    atomic_write(path, lambda f: torch.export.save(program, f, extra_files={"meta.json": json.dumps(meta)}))


if __name__ == "__main__":
    # The flags on the command line, even those given at their default (load_checkpoint).
    typed = frozenset(a.split("=")[0] for a in sys.argv[1:])
    main(tyro.cli(Args, description=__doc__.split("\n\n")[0]), typed)
