# docs and experiment results: docs/dime_morl.md
"""Online multi-objective MPO: DiME, linear scalarization (LS) and MO-MPO (paper Sec. 3, 4, 6.1; App. A-D.1).

Policy iteration with one distributional critic head per objective (policy evaluation, C51) and an
MPO-style policy improvement: a non-parametric E-step per objective, q_k ∝ π_i exp(Q_k/η_k) (eq. 38)
with a learned temperature (dual, eq. 45), then a supervised M-step (projection) that differs by method:

    dime   minimise Σ_k α_k KL(q_k ‖ π_θ)               (eq. 3, eq. 51)   ε_k = --epsilon for every k
    ls     one q ∝ π_i exp(Σ_k α_k Q_k / η)              (Table 1)         one temperature
    mompo  minimise Σ_k KL(q_k ‖ π_θ), ε_k = α_k·ε        (Abdolmaleki et al., 2020; Fig. 4b)

Environments (`--env-id`):
    schaffer, fonseca_fleming   one-step bandits, a ∈ R, rewards -f(a) (App. D.1.1). The exact reward is
                                Q_k, so there is no critic, no actor and no replay: only learner steps.
    <domain>_<task>             any DeepMind control-suite task (e.g. cheetah_run) through shimmy, with
                                objectives [task reward, -‖clip(a)‖₂·--cost-scale] (App. D.1.2).

Decisions the paper leaves open (see docs/dime_morl.md, "Implementation details"):
- Trade-off vector: bandits use (1-α, α) for every method; control tasks use (1, α) for dime and mompo
  (Table 4: α_task = 1, α_cost swept) and (1-α, α) for ls.
- As in Acme's DMPO learner, the E-step and M-step run on the bootstrap states s_{t+n} and reuse the N
  target-policy actions and the one target-critic pass of the C51 target. This halves the dominant cost of
  a learner step; in online replay every stored state serves as both s_t and s_{t+n}.
- One critic torso with a categorical head per objective, each on its own support: the task support is
  [--v-min, --v-max]; the cost support is [-√D·cost_scale/(1-γ), 0] unless --cost-v-min is given, so
  scaling the cost rescales its support and the critic's distribution is unchanged (scale invariance).
- Actors are a gymnasium vector env stepped in lockstep and reset together ("rounds"): control-suite
  episodes all last 1000 steps. If one actor terminates early, the others are cut there as a time-limit
  truncation (bootstrapped). Evaluation and checkpoints happen at round boundaries, so `--resume`
  continues exactly: reset seeds derive from (seed, round), and the RNG, replay and optimiser states
  are saved. Bandits have no rounds; they checkpoint at any learner step.
- `--multi` conditions policy and critic on the trade-off vector: actors draw α ~ U(--alpha-range) per
  episode, the learner relabels each sampled transition with a fresh α (App. A).
- The cost objective uses the executed (clipped) action. `--save-replay` stores the task reward only.

Shape letters: B batch, N sampled actions per state, D action dims, K objectives, I atoms, E actors.
"""

import dataclasses
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from tqdm import tqdm

from common.c51 import categorical_l2_project

MPO_FLOAT_EPSILON = 1e-8  # added to every softplus dual (Acme)
MIN_LOG_DUAL = -18.0  # lower clamp of the dual parameters (Acme _MIN_LOG_TEMPERATURE)
INIT_ALPHA_MEAN, INIT_ALPHA_STDDEV = 10.0, 1000.0  # initial M-step trust-region multipliers (Acme)
POLICY_INIT_SCALE, POLICY_MIN_SCALE = 0.7, 1e-6  # Gaussian head stddev at init / floor (Acme)
EPSILON_PENALTY = 1e-3  # KL bound of the optional out-of-bounds action objective (Acme)
BANDITS = ("schaffer", "fonseca_fleming")
VIDEO_FRAME_SKIP = 4  # --capture-video keeps every 4th frame of the first evaluation episode
RESUME_OVERRIDES = ("total_steps", "total_env_steps", "checkpoint_every", "eval_every", "resume", "cuda",
                    "track", "save_model", "save_replay", "capture_video", "log_every", "compile")


# ----------------------------------------------------------------------------------------------------
# 1. Args
# ----------------------------------------------------------------------------------------------------
@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
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
    """save the first evaluation episode of every evaluation as a GIF under <run>/videos (needs rendering)"""
    save_model: bool = False
    """export the policy with torch.export (loads without this file): <run>/policy.pt2 at the end and
    <run>/policies/step_<learner step>.pt2 at every evaluation (early/middle/late policies for the zoo)"""
    checkpoint_every: int = 50_000
    """write <run>/checkpoint.pt every this many learner steps (at the next round boundary); 0 = never"""
    resume: Optional[str] = None
    """path of a checkpoint.pt to continue exactly (the run keeps its directory and flags)"""
    save_replay: Optional[str] = None
    """at the end, write the replay as an HDF5 dataset in the project's format to this new file"""
    log_every: int = 100
    """log losses every this many learner steps (the only host<->device sync of the learner)"""
    compile: bool = False
    """torch.compile the networks (CPU: ~25% faster learner steps after ~15 s of compilation)"""

    # Algorithm specific arguments
    env_id: str = "fonseca_fleming"
    """schaffer | fonseca_fleming | a control-suite task <domain>_<task> (e.g. cartpole_swingup)"""
    method: Literal["dime", "ls", "mompo"] = "dime"
    """how objectives are combined: DiME (eq. 3), linear scalarization (Table 1) or MO-MPO"""
    alpha: float = 0.5
    """trade-off: cost weight (dime, ls: [0,1] for ls), cost KL-bound scale (mompo); bandits: [0, 1]"""
    multi: bool = False
    """train one trade-off-conditioned policy for α ~ U(--alpha-range) (Sec. 4 eq. 4, App. A)"""
    alpha_range: tuple[float, float] = (0.0, 1.0)
    """range of the trade-off sampled per episode and per transition with --multi"""
    eval_alphas: Optional[list[float]] = None
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
    batch_size: int = 512
    """transitions per learner step (Table 3)"""
    hidden_sizes: tuple[int, ...] = (1024, 1024, 1024, 1024, 1024, 512)
    """hidden layers of policy and critic (Table 3); CPU preset: 256 256 256"""
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
    cost_v_min: Optional[float] = None
    """lower end of the cost critic's support (default -√D·cost_scale/(1-γ); upper end is 0)"""
    num_atoms: int = 101
    """atoms of each categorical critic (Table 3)"""
    epsilon: float = 0.1
    """ε_k: KL bound of each E-step (Table 3); mompo scales it by the trade-off"""
    epsilon_mean: float = 1e-3
    """ε_μ: M-step KL bound on the policy mean (Table 4, MORL)"""
    epsilon_stddev: float = 1e-7
    """ε_σ: M-step KL bound on the policy stddev (Table 4, MORL)"""
    init_temperature: float = 10.0
    """initial temperature η_k (Table 3)"""
    action_penalization: bool = False
    """add Acme's out-of-bounds action objective (-‖a - clip(a)‖₂, KL bound 1e-3)"""
    lr: float = 1e-4
    """Adam learning rate of policy and critic (Table 3)"""
    dual_lr: float = 1e-2
    """Adam learning rate of the dual variables (Table 3)"""
    weight_decay: float = 0.0
    """decoupled (AdamW) weight decay of policy and critic; 0 online"""
    target_update_period: int = 200
    """learner steps between hard copies into the target networks (Table 4, MORL)"""
    grad_clip: float = 40.0
    """global gradient-norm clip of policy and critic"""
    eval_every: int = 10_000
    """evaluate every this many learner steps (control: at the next round boundary)"""
    eval_episodes: int = 10
    """episodes per evaluation and trade-off (control tasks; bandits are deterministic)"""
    hv_reference: Optional[tuple[float, float]] = None
    """hypervolume reference point (default: the worst return of each objective)"""


def fail(message: str) -> None:
    """User error: one clear line on stderr, non-zero exit, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(args: Args) -> None:
    """Validate flags once, naming the flag, the value received and the fix."""
    bandit = args.env_id in BANDITS
    if not bandit and args.env_id not in control_suite_tasks():
        fail(f"--env-id {args.env_id!r} is unknown; use schaffer, fonseca_fleming or a control-suite task "
             f"such as cartpole_swingup, cheetah_run, walker_walk")
    if (bandit or args.method == "ls") and not 0.0 <= args.alpha <= 1.0:
        fail(f"--alpha {args.alpha} is outside [0, 1] (needed by bandits and --method ls); pick a value in it")
    if args.alpha < 0.0:
        fail(f"--alpha {args.alpha} is negative; trade-offs are non-negative weights")
    if args.multi and args.method == "mompo":
        fail("--multi supports --method dime or ls (MO-MPO's trade-offs are KL bounds); drop --multi")
    if args.multi and not 0.0 <= args.alpha_range[0] <= args.alpha_range[1]:
        fail(f"--alpha-range {args.alpha_range} must be two increasing non-negative values")
    for name in ("batch_size", "num_samples", "n_step", "num_envs", "num_atoms", "eval_episodes"):
        if getattr(args, name) < 1 + (name == "num_atoms"):
            fail(f"--{name.replace('_', '-')} {getattr(args, name)} is too small; use a positive value")
    if not bandit and args.buffer_size < args.num_envs * (args.n_step + 1):
        fail(f"--buffer-size {args.buffer_size} cannot hold n-step windows; use at least 10000")
    if args.save_replay and (bandit or os.path.exists(args.save_replay)):
        fail(f"--save-replay {args.save_replay}: bandits have no replay, or the file exists (choose a new path)")


# ----------------------------------------------------------------------------------------------------
# 2. Environments and objectives
# ----------------------------------------------------------------------------------------------------
def control_suite_tasks() -> dict[str, str]:
    """Map '<domain>_<task>' to shimmy's gymnasium id 'dm_control/<domain>-<task>-v0'."""
    from dm_control import suite

    return {f"{d}_{t}": f"dm_control/{d}-{t}-v0" for d, t in suite.ALL_TASKS}


def make_env(env_id: str, render: bool = False):
    """One control-suite env; dict observations flattened in alphabetical key order (SPEC §7)."""

    def thunk():
        import gymnasium as gym
        import shimmy

        gym.register_envs(shimmy)
        env = gym.make(control_suite_tasks()[env_id], render_mode="rgb_array" if render else None)
        return gym.wrappers.FlattenObservation(env)

    return thunk


def make_envs(env_id: str, num_envs: int, render: bool = False):
    """Actors or evaluators stepped in lockstep; resets are explicit (no autoreset), so rounds are exact.
    With `render`, the first env renders RGB frames."""
    import gymnasium as gym

    return gym.vector.SyncVectorEnv([make_env(env_id, render and i == 0) for i in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.DISABLED)


def round_seeds(seed: int, round_idx: int, stream: int, n: int) -> list[int]:
    """Reset seeds of one round, a pure function of (seed, round, stream): resume needs no env state."""
    return [int(s) for s in np.random.SeedSequence([seed, round_idx, stream]).generate_state(n)]


def bandit_rewards(env_id: str, actions: torch.Tensor) -> torch.Tensor:
    """[..., 1] actions -> [..., 2] rewards -f(a) of Schaffer or Fonseca-Fleming (App. D.1.1)."""
    a = actions[..., 0]
    if env_id == "schaffer":
        return torch.stack([-(a**2), -((a - 2.0) ** 2)], -1)
    return torch.stack([torch.exp(-((a - 1.0) ** 2)) - 1.0, torch.exp(-((a + 1.0) ** 2)) - 1.0], -1)


def tradeoff_vector(alpha: torch.Tensor, bandit: bool, method: str) -> torch.Tensor:
    """Trade-off α -> per-objective weights [..., K]: (1-α, α) for bandits and LS, else (1, α) (Table 4)."""
    first = 1.0 - alpha if bandit or method == "ls" else torch.ones_like(alpha)
    return torch.stack([first, alpha], -1)


def cost_support(args: Args, act_dim: int) -> tuple[float, float]:
    """Support of the cost critic: the range of -Σ γ^t ‖clip(a)‖₂·scale, unless --cost-v-min is set."""
    low = args.cost_v_min if args.cost_v_min is not None else -math.sqrt(act_dim) * args.cost_scale / (1 - args.gamma)
    return low, 0.0


# ----------------------------------------------------------------------------------------------------
# 3. Networks: LayerNorm torso, Gaussian policy, categorical critic (App. C)
# ----------------------------------------------------------------------------------------------------
def layer_norm_mlp(in_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    """Acme's LayerNormMLP: Linear -> LayerNorm -> tanh, then Linear -> ELU for every further layer."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_sizes[0]), nn.LayerNorm(hidden_sizes[0]), nn.Tanh()]
    for h_in, h_out in zip(hidden_sizes[:-1], hidden_sizes[1:]):
        layers += [nn.Linear(h_in, h_out), nn.ELU()]
    return nn.Sequential(*layers)


class Policy(nn.Module):
    """Diagonal Gaussian π(a|s): linear mean (no tanh), stddev = softplus(·)·0.7/softplus(0) + 1e-6."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.torso = layer_norm_mlp(obs_dim, hidden_sizes)
        self.mean = nn.Linear(hidden_sizes[-1], act_dim)
        self.stddev = nn.Linear(hidden_sizes[-1], act_dim)
        for head in (self.mean, self.stddev):  # small init: the initial policy is N(≈0, 0.7) everywhere
            nn.init.trunc_normal_(head.weight, std=math.sqrt(1e-4 / hidden_sizes[-1]))
            nn.init.zeros_(head.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.torso(obs)
        stddev = F.softplus(self.stddev(h)) * (POLICY_INIT_SCALE / math.log(2.0)) + POLICY_MIN_SCALE
        return self.mean(h), stddev


class Critic(nn.Module):
    """Categorical Q_k(s, a) for K objectives: one torso, K heads of I logits (Q = Σ softmax·atoms)."""

    def __init__(self, in_dim: int, num_objectives: int, num_atoms: int, hidden_sizes: tuple[int, ...]):
        super().__init__()
        self.shape = (num_objectives, num_atoms)
        self.torso = layer_norm_mlp(in_dim, hidden_sizes)
        self.head = nn.Linear(hidden_sizes[-1], num_objectives * num_atoms)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs.expand(*actions.shape[:-1], -1), actions.clamp(-1.0, 1.0)], -1)
        return self.head(self.torso(x)).unflatten(-1, self.shape)  # [..., K, I]


class Agent(nn.Module):
    """Every learned quantity (online and target networks, dual variables) in one state_dict."""

    def __init__(self, obs_dim: int, act_dim: int, num_objectives: int, num_temperatures: int, args: Args):
        super().__init__()
        self.policy = Policy(obs_dim, act_dim, args.hidden_sizes)
        self.target_policy = Policy(obs_dim, act_dim, args.hidden_sizes)
        self.critic = self.target_critic = None
        if args.env_id not in BANDITS:
            self.critic = Critic(obs_dim + act_dim, num_objectives, args.num_atoms, args.hidden_sizes)
            self.target_critic = Critic(obs_dim + act_dim, num_objectives, args.num_atoms, args.hidden_sizes)
        # Duals live in log space behind softplus (Acme): temperatures η_k, per-dimension α_μ, α_σ.
        self.log_temperature = nn.Parameter(torch.full((num_temperatures,), inv_softplus(args.init_temperature)))
        self.log_alpha_mean = nn.Parameter(torch.full((act_dim,), inv_softplus(INIT_ALPHA_MEAN)))
        self.log_alpha_stddev = nn.Parameter(torch.full((act_dim,), inv_softplus(INIT_ALPHA_STDDEV)))
        self.update_targets()

    @torch.no_grad()
    def update_targets(self) -> None:
        """Hard copy online -> target (Table 3: every --target-update-period learner steps)."""
        self.target_policy.load_state_dict(self.policy.state_dict())
        if self.critic is not None:
            self.target_critic.load_state_dict(self.critic.state_dict())


def inv_softplus(x: float) -> float:
    """θ such that softplus(θ) = x (initial value of a dual variable)."""
    return x + math.log(-math.expm1(-x))


def dual(param: torch.Tensor) -> torch.Tensor:
    """Positive dual variable from its log-space parameter (softplus + epsilon, Acme)."""
    return F.softplus(param) + MPO_FLOAT_EPSILON


# ----------------------------------------------------------------------------------------------------
# 4. Policy evaluation: C51 target (mixture over N target-policy actions, projection) and critic loss
# ----------------------------------------------------------------------------------------------------
def c51_target(next_pmfs: torch.Tensor, returns: torch.Tensor, discounts: torch.Tensor, atoms: torch.Tensor):
    """Project the mixture of the N target pmfs, shifted by the n-step return, onto each support (SPEC §4).

    next_pmfs [N, B, K, I], returns [B, K], discounts [B], atoms [K, I] -> target pmfs [B, K, I].
    """
    mixture = next_pmfs.mean(0)  # [B, K, I]
    return torch.stack([categorical_l2_project(mixture[:, k], returns[:, k], discounts, atoms[k])
                        for k in range(atoms.shape[0])], 1)


def critic_loss(logits: torch.Tensor, target_pmfs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the online logits [B, K, I] to the projected targets, summed over objectives."""
    return -(target_pmfs * logits.log_softmax(-1)).sum(-1).mean(0).sum()


# ----------------------------------------------------------------------------------------------------
# 5. E-step: per-objective weights, temperature dual, KL diagnostic
# ----------------------------------------------------------------------------------------------------
def compute_weights_and_temperature_loss(q_values: torch.Tensor, epsilon: torch.Tensor, temperature: torch.Tensor):
    """E-step: w_k = softmax_N(Q_k/η_k) per state (eq. 38) and the dual η_k(ε_k + E_s log E_a exp(Q_k/η_k)) (eq. 45).

    q_values [N, B, K'], epsilon [K'], temperature [K'] -> weights [N, B, K'] (no gradient), loss (scalar).
    """
    tempered = q_values.detach() / temperature
    weights = tempered.softmax(0).detach()
    log_mean_exp = tempered.logsumexp(0).mean(0) - math.log(q_values.shape[0])  # [K']
    return weights, (temperature * (epsilon + log_mean_exp)).sum()


def compute_nonparametric_kl(weights: torch.Tensor) -> torch.Tensor:
    """KL(q_k ‖ π_i) of the sample-based E-step solution, mean over states: [N, B, K'] -> [K']."""
    return (weights * torch.log(weights.shape[0] * weights + MPO_FLOAT_EPSILON)).sum(0).mean(0)


# ----------------------------------------------------------------------------------------------------
# 6. M-step: decoupled cross-entropy and KL trust region (Acme's MPO)
# ----------------------------------------------------------------------------------------------------
def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, stddev: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag(stddev²)), summed over the last (action) dimension."""
    return (-0.5 * ((x - mean) / stddev) ** 2 - stddev.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mean_p, stddev_p, mean_q, stddev_q) -> torch.Tensor:
    """Per-dimension KL(N(mean_p, stddev_p²) ‖ N(mean_q, stddev_q²)), shape of the inputs."""
    return (stddev_q / stddev_p).log() + (stddev_p**2 + (mean_p - mean_q) ** 2) / (2 * stddev_q**2) - 0.5


def compute_cross_entropy_loss(actions, weights, mean, stddev, target_mean, target_stddev) -> torch.Tensor:
    """-Σ_N w log π̃(a|s) with the decoupled policies N(μ_θ, σ_i) and N(μ_i, σ_θ), mean over states (eq. 51).

    actions [N, B, D], weights [N, B] (already combined across objectives), distribution params [B, D].
    """
    log_prob = gaussian_log_prob(actions, mean, target_stddev) + gaussian_log_prob(actions, target_mean, stddev)
    return -(weights * log_prob).sum(0).mean()


def compute_kl_penalty_and_dual_loss(kl: torch.Tensor, log_alpha: torch.Tensor, epsilon: float):
    """Soft trust region: penalty sg(α)·KL and dual α·(ε - sg(KL)), per action dimension. kl [B, D]."""
    alpha, mean_kl = dual(log_alpha), kl.mean(0)  # [D], [D]
    return (alpha.detach() * mean_kl).sum(), (alpha * (epsilon - mean_kl.detach())).sum(), mean_kl.mean()


# ----------------------------------------------------------------------------------------------------
# 7. Policy objective: how DiME, LS and MO-MPO combine the objectives
# ----------------------------------------------------------------------------------------------------
def combine_objectives(q_values: torch.Tensor, tradeoff: torch.Tensor, method: str, epsilon: float):
    """Turn per-objective Q [N, B, K] and trade-offs [B, K] into E-step inputs and M-step mixing weights.

    Returns (Q for the E-step [N, B, K'], ε per E-step [K'], M-step weight of each E-step [B, K']).
    dime: K E-steps with one ε, mixed by α_k (eq. 51). ls: one E-step on Σ_k α_k Q_k (Table 1).
    mompo: K E-steps with ε_k = α_k·ε, mixed equally.
    """
    ones = torch.ones_like(tradeoff)
    if method == "ls":
        q = (q_values * tradeoff).sum(-1, keepdim=True)
        return q, q_values.new_full((1,), epsilon), ones[:, :1]
    if method == "mompo":
        return q_values, epsilon * tradeoff[0], ones
    return q_values, q_values.new_full((q_values.shape[-1],), epsilon), tradeoff


def policy_loss(agent: Agent, states, target_mean, target_stddev, actions, q_values, tradeoff, args: Args):
    """MPO policy improvement on `states` [B, S]: π_i = N(target_mean, target_stddev) [B, D] proposed the
    `actions` [N, B, D], whose Q [N, B, K] are combined across objectives per --method."""
    q, epsilons, mix = combine_objectives(q_values, tradeoff, args.method, args.epsilon)
    if args.action_penalization:  # an extra objective that pulls actions back into [-1, 1]
        penalty = -torch.linalg.vector_norm(actions - actions.clamp(-1.0, 1.0), dim=-1)
        q, epsilons = torch.cat([q, penalty[..., None]], -1), F.pad(epsilons, (0, 1), value=EPSILON_PENALTY)
        mix = F.pad(mix, (0, 1), value=1.0)
    temperature = dual(agent.log_temperature)
    weights, temperature_loss = compute_weights_and_temperature_loss(q, epsilons, temperature)
    mean, stddev = agent.policy(states)
    cross_entropy = compute_cross_entropy_loss(actions, (weights * mix).sum(-1), mean, stddev, target_mean,
                                               target_stddev)
    kl_mean = gaussian_kl(target_mean, target_stddev, mean, target_stddev)  # KL(π_i ‖ N(μ_θ, σ_i))  [B, D]
    kl_stddev = gaussian_kl(target_mean, target_stddev, target_mean, stddev)  # KL(π_i ‖ N(μ_i, σ_θ))
    pen_mean, dual_mean, kl_mean = compute_kl_penalty_and_dual_loss(kl_mean, agent.log_alpha_mean, args.epsilon_mean)
    pen_std, dual_std, kl_std = compute_kl_penalty_and_dual_loss(kl_stddev, agent.log_alpha_stddev,
                                                                 args.epsilon_stddev)
    loss = cross_entropy + pen_mean + pen_std
    stats = {"losses/policy_loss": loss, "losses/kl_mean": kl_mean, "losses/kl_stddev": kl_std,
             "losses/alpha_mean": dual(agent.log_alpha_mean).mean(), "losses/alpha_stddev": dual(agent.log_alpha_stddev).mean()}
    for k, (eta, kl_q) in enumerate(zip(temperature, compute_nonparametric_kl(weights) / epsilons)):
        stats[f"losses/temperature_{k}"], stats[f"losses/kl_q_rel_{k}"] = eta, kl_q
    return loss + temperature_loss + dual_mean + dual_std, stats


# ----------------------------------------------------------------------------------------------------
# 7a. Replay on the device: 1-step transitions per actor, n-step returns assembled at sampling time
# ----------------------------------------------------------------------------------------------------
class Replay:
    """Ring buffer of [capacity, E] transitions. Windows never cross an episode end (terminal or cut)."""

    KEYS = ("obs", "actions", "rewards", "next_obs", "terminals", "ends")

    def __init__(self, capacity: int, num_envs: int, obs_dim: int, act_dim: int, num_objectives: int, device):
        rows = max(capacity // num_envs, 1)
        shapes = {"obs": (obs_dim,), "actions": (act_dim,), "rewards": (num_objectives,), "next_obs": (obs_dim,)}
        self.data = {k: torch.zeros(rows, num_envs, *shapes.get(k, ()), device=device,
                                    dtype=torch.float32 if k in shapes else torch.bool) for k in self.KEYS}
        self.rows, self.pos, self.full = rows, 0, False

    def add(self, **row: torch.Tensor) -> None:
        for k in self.KEYS:
            self.data[k][self.pos] = row[k]
        self.pos = (self.pos + 1) % self.rows
        self.full = self.full or self.pos == 0

    def sample(self, batch_size: int, n: int, gamma: float, gen: torch.Generator):
        """n-step transitions: R = Σ_{k<m} γ^k r_{t+k}, discount γ^m·(1 - terminal), m ≤ n steps taken (SPEC §4)."""
        d, device = self.data, self.data["obs"].device
        size = self.rows if self.full else self.pos
        start = self.pos if self.full else 0
        t = (start + torch.randint(0, size - n + 1, (batch_size,), device=device, generator=gen)) % self.rows
        e = torch.randint(0, d["obs"].shape[1], (batch_size,), device=device, generator=gen)
        steps = torch.arange(n, device=device)
        idx = (t[None] + steps[:, None]) % self.rows  # [n, B]
        ends = d["ends"][idx, e].float()
        alive = torch.cumprod(torch.cat([torch.ones_like(ends[:1]), 1.0 - ends[:-1]]), 0)  # [n, B]
        returns = ((alive * gamma ** steps[:, None].float())[..., None] * d["rewards"][idx, e]).sum(0)  # [B, K]
        taken = alive.sum(0).long()  # [B]
        last = idx.gather(0, (taken - 1)[None]).squeeze(0)
        discounts = gamma ** taken.float() * (1.0 - d["terminals"][last, e].float())
        return d["obs"][t, e], d["actions"][t, e], returns, discounts, d["next_obs"][last, e]

    def state_dict(self) -> dict:
        """The filled rows only (a checkpoint of a young buffer stays small)."""
        rows = self.rows if self.full else self.pos
        return {**{k: v[:rows] for k, v in self.data.items()}, "pos": self.pos, "full": self.full}

    def load_state_dict(self, saved: dict) -> None:
        for k in self.KEYS:
            self.data[k][: len(saved[k])] = saved[k]
        self.pos, self.full = saved["pos"], saved["full"]

    def chronological(self) -> dict[str, np.ndarray]:
        """Every actor's transitions in time order, actor after actor (for --save-replay)."""
        order = torch.arange(self.pos, self.pos + self.rows) % self.rows if self.full else torch.arange(self.pos)
        return {k: v[order.to(v.device)].transpose(0, 1).flatten(0, 1).cpu().numpy() for k, v in self.data.items()}


# ----------------------------------------------------------------------------------------------------
# 8. Learner step: one update of critic, policy and duals
# ----------------------------------------------------------------------------------------------------
def learner_step(agent: Agent, optimizers: dict, replay: Optional[Replay], atoms, args: Args, gen) -> dict:
    """One gradient step on every parameter group; returns metric tensors (no host sync)."""
    device = agent.log_temperature.device
    bandit = replay is None
    if bandit:  # one-step bandit: a single dummy state, exact rewards
        states = torch.zeros(args.batch_size, 1, device=device)
    else:
        obs, actions, returns, discounts, states = replay.sample(args.batch_size, args.n_step, args.gamma, gen)
    alphas = torch.full((args.batch_size,), args.alpha, device=device)
    if args.multi:  # hindsight relabelling: a fresh trade-off for every sampled transition (App. A)
        low, high = args.alpha_range
        alphas = low + (high - low) * torch.rand(args.batch_size, device=device, generator=gen)
    tradeoff = tradeoff_vector(alphas, bandit, args.method)  # [B, K]
    if args.multi:
        states = torch.cat([states, tradeoff], -1)
    with torch.no_grad():  # N actions from the target policy (π_i) and their Q_k
        target_mean, target_stddev = agent.target_policy(states)
        noise = torch.randn(args.num_samples, *target_mean.shape, device=device, generator=gen)
        sampled = target_mean + target_stddev * noise  # [N, B, D]
        if bandit:
            q_values = bandit_rewards(args.env_id, sampled)  # [N, B, K]
        else:
            next_pmfs = agent.target_critic(states, sampled).softmax(-1)  # [N, B, K, I]
            q_values = (next_pmfs * atoms).sum(-1)  # [N, B, K]
            target_pmfs = c51_target(next_pmfs, returns, discounts, atoms)
    loss, stats = policy_loss(agent, states, target_mean, target_stddev, sampled, q_values, tradeoff, args)
    if not bandit:
        obs = torch.cat([obs, tradeoff], -1) if args.multi else obs
        stats["losses/critic_loss"] = critic_loss(agent.critic(obs, actions), target_pmfs)
        loss = loss + stats["losses/critic_loss"]
    stats["losses/q_mean"] = q_values.mean()
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for name, opt in optimizers.items():
        if name != "duals":
            nn.utils.clip_grad_norm_(getattr(agent, name).parameters(), args.grad_clip)
        opt.step()
    with torch.no_grad():
        for p in (agent.log_temperature, agent.log_alpha_mean, agent.log_alpha_stddev):
            p.clamp_(min=MIN_LOG_DUAL)
    stats["loss"] = loss.detach()
    return stats


# ----------------------------------------------------------------------------------------------------
# 9. main: seeding, run directory, actors and learner
# ----------------------------------------------------------------------------------------------------
def main(args: Args) -> dict:
    os.environ.setdefault("MUJOCO_GL", "egl" if args.capture_video else "disable")  # before dm_control loads
    check_args(args)
    ckpt = load_checkpoint(args) if args.resume else None
    if ckpt is not None:
        args = ckpt["args"]
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if args.cuda and device.type == "cpu":
        print("notice: CUDA is not available, training on the CPU")
    gen = torch.Generator(device).manual_seed(args.seed)
    bandit = args.env_id in BANDITS
    envs = None if bandit else make_envs(args.env_id, args.num_envs)
    obs_dim, act_dim = (1, 1) if bandit else (envs.single_observation_space.shape[0], envs.single_action_space.shape[0])
    K = 2  # objectives: (f1, f2) for bandits, (task, cost) for control tasks
    num_temperatures = (1 if args.method == "ls" else K) + args.action_penalization
    cond = K if args.multi else 0
    agent = Agent(obs_dim + cond, act_dim, K, num_temperatures, args).to(device)
    if args.compile:  # compiles forward in place: state_dict keys stay the same
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch")  # inductor internals
        for net in (agent.policy, agent.target_policy, agent.critic, agent.target_critic):
            net is not None and net.compile()
    atoms = None
    if not bandit:
        atoms = torch.stack([torch.linspace(args.v_min, args.v_max, args.num_atoms),
                             torch.linspace(*cost_support(args, act_dim), args.num_atoms)]).to(device)
    groups = {"policy": agent.policy, "critic": agent.critic} if not bandit else {"policy": agent.policy}
    optimizers = {n: torch.optim.AdamW(m.parameters(), args.lr, weight_decay=args.weight_decay) for n, m in groups.items()}
    optimizers["duals"] = torch.optim.Adam([agent.log_temperature, agent.log_alpha_mean, agent.log_alpha_stddev],
                                           args.dual_lr)
    replay = None if bandit else Replay(args.buffer_size, args.num_envs, obs_dim, act_dim, K, device)
    state = {"learner_steps": 0, "env_steps": 0, "round": 0, "credit": 0.0, "evaluations": [],
             "last_eval": -1, "last_ckpt": 0, "wall_time": 0.0}
    run_dir = os.path.dirname(os.path.abspath(args.resume)) if ckpt else make_run_dir(args)
    if ckpt is not None:
        restore(ckpt, agent, optimizers, replay, gen, state)
    writer = make_writer(args, run_dir)
    eval_alphas = evaluation_alphas(args)
    total = args.total_steps if bandit else args.total_env_steps
    progress = tqdm(total=total, initial=state["learner_steps" if bandit else "env_steps"], unit="step",
                    desc=f"{args.method} {args.env_id}", dynamic_ncols=True, disable=None)
    start, metrics, last_log = time.time() - state["wall_time"], [], (state["learner_steps"], time.time())

    def learn() -> None:
        nonlocal last_log
        metrics.append(learner_step(agent, optimizers, replay, atoms, args, gen))
        state["learner_steps"] += 1
        if state["learner_steps"] % args.target_update_period == 0:
            agent.update_targets()
        if state["learner_steps"] % args.log_every == 0:
            last_log = log_metrics(writer, metrics, state["learner_steps"], last_log, run_dir)
            metrics.clear()

    while state["learner_steps" if bandit else "env_steps"] < total:
        steps = state["learner_steps"]
        if state["last_eval"] < 0 or steps - state["last_eval"] >= args.eval_every:
            evaluate_and_log(agent, args, eval_alphas, state, writer, run_dir, device, progress)
        if args.checkpoint_every and steps - state["last_ckpt"] >= args.checkpoint_every:
            state["wall_time"], state["last_ckpt"] = time.time() - start, steps
            save_checkpoint(run_dir, args, agent, optimizers, replay, gen, state)
        before = state["env_steps"]
        if bandit:
            learn()
        else:
            run_round(envs, agent, replay, args, state, gen, device, writer, learn)
        progress.update(state["learner_steps"] - steps if bandit else state["env_steps"] - before)
    state["wall_time"] = time.time() - start
    if args.checkpoint_every:  # before the final evaluation, which an extended (resumed) run would not make
        state["last_ckpt"] = state["learner_steps"]
        save_checkpoint(run_dir, args, agent, optimizers, replay, gen, state)
    evaluate_and_log(agent, args, eval_alphas, state, writer, run_dir, device, progress)
    progress.close()
    if args.save_model:
        export_policy(agent, args, os.path.join(run_dir, "policy.pt2"))
    if args.save_replay:
        save_replay(replay, args, args.save_replay)
    results = write_results(args, state, run_dir, eval_alphas, act_dim)
    writer.close()
    return results


def run_round(envs, agent: Agent, replay: Replay, args: Args, state: dict, gen, device, writer, learn) -> None:
    """Every actor plays one episode (lockstep, resets seeded by the round); learner steps interleave."""
    obs, _ = envs.reset(seed=round_seeds(args.seed, state["round"], 0, args.num_envs))
    obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
    alphas = torch.full((args.num_envs,), args.alpha, device=device)
    if args.multi:  # one trade-off per actor and episode (App. C, "Gathering Data")
        low, high = args.alpha_range
        alphas = low + (high - low) * torch.rand(args.num_envs, device=device, generator=gen)
    cond = tradeoff_vector(alphas, False, args.method)
    episode_return = torch.zeros(args.num_envs, 2, device=device)
    done = False
    while not done:
        with torch.no_grad():
            mean, stddev = agent.policy(torch.cat([obs, cond], -1) if args.multi else obs)
            actions = (mean + stddev * torch.randn(mean.shape, device=device, generator=gen)).clamp(-1.0, 1.0)
        next_obs, reward, terminated, truncated, _ = envs.step(actions.cpu().numpy())
        done = bool(np.any(terminated | truncated))  # one actor ends the round for all (module docstring)
        cost = -torch.linalg.vector_norm(actions, dim=-1) * args.cost_scale
        rewards = torch.stack([torch.as_tensor(reward, dtype=torch.float32, device=device), cost], -1)
        next_obs = torch.as_tensor(next_obs, dtype=torch.float32, device=device)
        terminals = torch.as_tensor(terminated, device=device)
        replay.add(obs=obs, actions=actions, rewards=rewards, next_obs=next_obs, terminals=terminals,
                   ends=torch.full_like(terminals, done))
        episode_return += rewards
        obs = next_obs
        state["env_steps"] += args.num_envs
        if state["env_steps"] >= max(args.learning_starts, args.num_envs * args.n_step):
            state["credit"] += args.num_envs * args.replay_ratio
            while state["credit"] >= 1.0:
                learn()
                state["credit"] -= 1.0
    for k, v in zip(("episodic_return", "episodic_cost"), episode_return.mean(0).tolist()):
        writer.add_scalar(f"charts/{k}", v, state["env_steps"])
    state["round"] += 1


def log_metrics(writer, metrics: list[dict], step: int, last_log: tuple, run_dir: str) -> tuple:
    """Average the metric tensors since the last log, one device->host copy, stop on NaN/inf."""
    keys = list(metrics[0])
    values = torch.stack([torch.stack([m[k] for m in metrics]).mean() for k in keys]).tolist()
    if not all(math.isfinite(v) for v in values):
        bad = [k for k, v in zip(keys, values) if not math.isfinite(v)]
        print(f"error: training diverged at learner step {step} ({', '.join(bad)} not finite); the last good "
              f"checkpoint is kept in {run_dir}; lower --lr or check the rewards", file=sys.stderr)
        sys.exit(3)
    for k, v in zip(keys, values):
        if k != "loss":
            writer.add_scalar(k, v, step)
    now = time.time()
    writer.add_scalar("charts/SPS", (step - last_log[0]) / max(now - last_log[1], 1e-9), step)
    return step, now


# ----------------------------------------------------------------------------------------------------
# 10. Evaluation: per-trade-off returns, Pareto front, hypervolume
# ----------------------------------------------------------------------------------------------------
def evaluation_alphas(args: Args) -> list[float]:
    """The trade-offs a run is evaluated at: its own α, or a sweep for a conditioned policy."""
    if not args.multi:
        return [args.alpha]
    return args.eval_alphas or np.linspace(*args.alpha_range, 5).round(4).tolist()


@torch.no_grad()
def evaluate(agent: Agent, args: Args, alpha: float, round_idx: int, device, video: Optional[str] = None):
    """Per-episode objective returns [episodes, K] of the mean action (clipped to [-1, 1] for control).
    With `video`, the first episode is rendered (every VIDEO_FRAME_SKIP-th frame) into that GIF."""
    bandit = args.env_id in BANDITS
    cond = tradeoff_vector(torch.tensor([alpha], device=device), bandit, args.method) if args.multi else None
    if bandit:
        obs = torch.zeros(1, 1, device=device)
        mean, _ = agent.policy(torch.cat([obs, cond], -1) if args.multi else obs)
        return bandit_rewards(args.env_id, mean).cpu().numpy()
    envs = make_envs(args.env_id, args.eval_episodes, render=video is not None)
    obs, _ = envs.reset(seed=round_seeds(args.seed, round_idx, 1, args.eval_episodes))
    returns, alive, frames, t = np.zeros((args.eval_episodes, 2)), np.ones(args.eval_episodes, bool), [], 0
    while alive.any():
        if video and alive[0] and t % VIDEO_FRAME_SKIP == 0:
            frames.append(envs.envs[0].render())
        t += 1
        x = torch.as_tensor(obs, dtype=torch.float32, device=device)
        mean, _ = agent.policy(torch.cat([x, cond.expand(len(x), -1)], -1) if args.multi else x)
        actions = mean.clamp(-1.0, 1.0).cpu().numpy()
        obs, reward, terminated, truncated, _ = envs.step(actions)
        returns[alive] += np.stack([reward, -np.linalg.norm(actions, axis=-1) * args.cost_scale], -1)[alive]
        alive &= ~(terminated | truncated)
    envs.close()
    if video:
        import imageio

        os.makedirs(os.path.dirname(video), exist_ok=True)
        imageio.mimsave(video, frames, duration=1000 * VIDEO_FRAME_SKIP / 100, loop=0)  # 100 Hz control
    return returns


def evaluate_and_log(agent, args, eval_alphas, state, writer, run_dir, device, progress) -> None:
    """Evaluate every trade-off, append to the results, log eval/ tags (and snapshot the policy)."""
    step = state["learner_steps"]
    if args.save_model:
        os.makedirs(os.path.join(run_dir, "policies"), exist_ok=True)
        export_policy(agent, args, os.path.join(run_dir, "policies", f"step_{step}.pt2"))
    for alpha in eval_alphas:
        video = os.path.join(run_dir, "videos", f"step_{step}_alpha_{alpha}.gif") if args.capture_video else None
        returns = evaluate(agent, args, alpha, state["round"], device, video)
        mean = returns.mean(0).tolist()
        state["evaluations"].append({"step": step, "env_steps": state["env_steps"], "alpha": alpha,
                                     "returns": returns.tolist(), "mean": mean})
        progress.write(f"step {step} env_steps {state['env_steps']} alpha {alpha}: mean returns "
                       + " ".join(f"{m:.3f}" for m in mean))
        prefix = f"eval/alpha_{alpha}/" if args.multi else "eval/"
        writer.add_scalar(prefix + "episodic_return", mean[0], step)
        writer.add_scalar(prefix + "episodic_cost", mean[1], step)
    state["last_eval"] = step
    progress.set_postfix_str(f"eval {state['evaluations'][-1]['mean'][0]:.1f}")


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """True for points no other point dominates (every objective is maximised)."""
    dominated = (points[None] >= points[:, None]).all(-1) & (points[None] > points[:, None]).any(-1)
    return ~dominated.any(1)


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Area dominated by 2-D points and bounded below by the reference point (maximisation)."""
    front = points[pareto_mask(points) & (points > reference).all(-1)]
    front = front[np.argsort(-front[:, 0])]
    area, best_y = 0.0, reference[1]
    for x, y in front:  # sweep from the best first objective down
        if y > best_y:
            area += (x - reference[0]) * (y - best_y)
            best_y = y
    return float(area)


def write_results(args: Args, state: dict, run_dir: str, eval_alphas: list[float], act_dim: int) -> dict:
    """results.json (SPEC §8) plus the Pareto front, hypervolume and a plot of the final evaluation."""
    finals = state["evaluations"][-len(eval_alphas):]
    final = [{"alpha": e["alpha"], "mean": e["mean"], "std": np.std(e["returns"], 0).tolist()} for e in finals]
    points = np.array([f["mean"] for f in final])
    reference = np.array(args.hv_reference or default_reference(args, act_dim))
    elapsed = max(state["wall_time"], 1e-9)
    results = {"algo": "dime_morl", "method": args.method, "env_id": args.env_id, "seed": args.seed,
               "alpha": None if args.multi else args.alpha,
               "objectives": ["f1", "f2"] if args.env_id in BANDITS else ["task", "cost"],
               "evaluations": state["evaluations"], "final": final if args.multi else final[0],
               "pareto": points[pareto_mask(points)].tolist(), "hypervolume": hypervolume(points, reference),
               "hv_reference": reference.tolist(), "learner_steps": state["learner_steps"],
               "env_steps": state["env_steps"], "learner_steps_per_second": state["learner_steps"] / elapsed,
               "wall_time_s": elapsed, "args": dataclasses.asdict(args)}
    atomic_write(os.path.join(run_dir, "results.json"), lambda f: write_json(f, results))
    plot_front(points, args, os.path.join(run_dir, "pareto.png"))
    return results


def default_reference(args: Args, act_dim: int) -> list[float]:
    """Worst return of each objective: the hypervolume reference point stated in results.json."""
    if args.env_id == "schaffer":
        return [-4.0, -4.0]  # each objective's value at the other's optimum
    if args.env_id == "fonseca_fleming":
        return [-1.0, -1.0]
    return [0.0, -math.sqrt(act_dim) * args.cost_scale * 1000]  # 1000-step episodes


def plot_front(points: np.ndarray, args: Args, path: str) -> None:
    """Scatter the evaluated trade-offs over the true front (bandits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    if args.env_id in BANDITS:
        a = torch.linspace(-1.5, 2.5, 400)[:, None]
        f = bandit_rewards(args.env_id, a)
        keep = (a[:, 0] >= (0 if args.env_id == "schaffer" else -1)) & (a[:, 0] <= (2 if args.env_id == "schaffer" else 1))
        ax.plot(f[keep, 0], f[keep, 1], color="0.7", label="Pareto front")
    ax.scatter(points[:, 0], points[:, 1], c="C0", label=f"{args.method} (final)")
    ax.set(xlabel="objective 1" if args.env_id in BANDITS else "task return",
           ylabel="objective 2" if args.env_id in BANDITS else "cost return", title=args.env_id)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------
# 11. Run directory, checkpoints (atomic), resume, export
# ----------------------------------------------------------------------------------------------------
def make_run_dir(args: Args) -> str:
    run_dir = os.path.join(args.output_dir, f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}")
    try:
        os.makedirs(run_dir, exist_ok=False)
    except OSError as e:
        fail(f"cannot create the run directory {run_dir} ({e.strerror}); pass a writable --output-dir")
    write_json(os.path.join(run_dir, "args.json"), dataclasses.asdict(args))
    return run_dir


def make_writer(args: Args, run_dir: str):
    from torch.utils.tensorboard import SummaryWriter

    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, sync_tensorboard=True, config=vars(args),
                   name=os.path.basename(run_dir), save_code=True)
    writer = SummaryWriter(run_dir)
    table = "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
    return writer


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def atomic_write(path: str, write) -> None:
    """Write through a temporary file and rename it: a crash never leaves half a file at `path`."""
    tmp = os.path.join(os.path.dirname(path), f".tmp{os.getpid()}.{os.path.basename(path)}")  # same suffix
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(run_dir, args, agent, optimizers, replay, gen, state) -> None:
    """Everything needed to continue exactly: networks, targets, duals, optimisers, replay, RNG, counters.
    Parameters that are no longer finite are never written over the last good checkpoint."""
    if not all(torch.isfinite(p).all() for p in agent.parameters()):
        fail(f"training diverged before learner step {state['learner_steps']} (parameters not finite); the last "
             f"good checkpoint is kept in {run_dir}; lower --lr or check the rewards")
    ckpt = {"script": "dime_morl", "env_id": args.env_id, "args": dataclasses.asdict(args),
            "agent": agent.state_dict(), "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "replay": None if replay is None else replay.state_dict(),
            "rng": gen.get_state(), "state": state}
    atomic_write(os.path.join(run_dir, "checkpoint.pt"), lambda f: torch.save(ckpt, f))


def load_checkpoint(args: Args) -> dict:
    """Read a checkpoint for --resume; refuse one of another script or env with one clear line."""
    try:
        ckpt = torch.load(args.resume, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file (pickle, zip, I/O) is the same user error
        fail(f"--resume {args.resume} is not a readable checkpoint ({type(e).__name__}); pass a checkpoint.pt "
             f"written by dime_morl.py")
    if not isinstance(ckpt, dict) or ckpt.get("script") != "dime_morl":
        fail(f"--resume {args.resume} was not written by dime_morl.py; pass one of its checkpoint.pt files")
    saved, defaults = ckpt["args"], Args()

    def norm(value):
        return list(value) if isinstance(value, tuple) else value

    for field in dataclasses.fields(Args):  # flags given now (not at their default) must agree
        value, old = norm(getattr(args, field.name)), norm(saved[field.name])
        if field.name not in RESUME_OVERRIDES and value != norm(getattr(defaults, field.name)) and value != old:
            fail(f"--resume: the checkpoint was trained with --{field.name.replace('_', '-')} {old}, got {value}; "
                 f"drop the flag to continue that run")
    overrides = {k: getattr(args, k) for k in RESUME_OVERRIDES if getattr(args, k) != getattr(defaults, k)}
    ckpt["args"] = Args(**{**saved, **overrides})
    return ckpt


def restore(ckpt: dict, agent, optimizers, replay, gen, state) -> None:
    agent.load_state_dict(ckpt["agent"])
    for k, opt in optimizers.items():
        opt.load_state_dict(ckpt["optimizers"][k])
    if replay is not None:
        replay.load_state_dict(ckpt["replay"])
    gen.set_state(ckpt["rng"])
    state.update(ckpt["state"])


def export_policy(agent: Agent, args: Args, path: str) -> None:
    """Exported policy (torch.export), loadable without this file:
    `torch.export.load(path).module()(obs [B, S]) -> (mean [B, D], stddev [B, D])`; metadata in meta.json."""
    in_dim = agent.policy.torso[0].in_features
    policy = Policy(in_dim, agent.policy.mean.out_features, args.hidden_sizes)
    policy.load_state_dict(agent.policy.state_dict())
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(policy.cpu().eval(), (torch.zeros(2, in_dim),), dynamic_shapes=({0: batch},))
    meta = {"env_id": args.env_id, "obs_dim": in_dim, "act_dim": policy.mean.out_features, "multi": args.multi,
            "script": "dime_morl.py", "hidden_sizes": list(args.hidden_sizes)}
    atomic_write(path, lambda f: torch.export.save(program, f, extra_files={"meta.json": json.dumps(meta)}))


def save_replay(replay: Replay, args: Args, path: str) -> None:
    """The replay as a project/D4RL-style HDF5 dataset (task reward; each actor's last row ends an episode)."""
    import h5py

    data = replay.chronological()
    rows = len(data["obs"]) // args.num_envs
    timeouts = data["ends"] & ~data["terminals"]
    timeouts[rows - 1 :: rows] |= ~data["terminals"][rows - 1 :: rows]  # each actor's stream is cut there

    def write(f):
        with h5py.File(f, "w") as h5:
            for key, value in (("observations", data["obs"]), ("actions", data["actions"]),
                               ("rewards", data["rewards"][:, 0]), ("next_observations", data["next_obs"]),
                               ("terminals", data["terminals"]), ("timeouts", timeouts)):
                h5.create_dataset(key, data=value, compression="gzip")
            h5.attrs.update({"env_id": args.env_id, "source": "dime_morl.py replay", "seed": args.seed})

    atomic_write(path, write)


if __name__ == "__main__":
    main(tyro.cli(Args))
