"""Paper Fig. 1a: sweep the trade-off for DiME and LS on the Schaffer and Fonseca-Fleming bandits.

    python benchmarks/toy_fronts.py        # 21 trade-offs x 2 methods x 2 bandits, a few minutes
    python benchmarks/toy_fronts.py --alphas 0.1 0.5 0.9 --steps 500

Every cell is one unchanged `dime_morl.py` run (in-process). Prints the final action per α and the share
of the true front each method covers; writes docs/figures/toy_fronts.png and a results JSON. Two settings
of the policy's stddev trust region: "adaptive" (default --init-log-alpha-stddev 10, σ shrinks as the
policy converges) and "held" (1000, Acme JAX MPO's value: σ stays ≈ 0.7 over these short runs).
Claim checked: on Fonseca-Fleming (concave front) DiME's solutions spread along the front as α varies
while LS's cluster at the two extremes; on Schaffer (convex) both cover it.
"""

import argparse
import contextlib
import io
import itertools
import json
import os
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import dime_morl  # noqa: E402

SIGMA_MODES = {"adaptive": 10.0, "held": 1000.0}  # --init-log-alpha-stddev
FRONT = {"schaffer": (0.0, 2.0), "fonseca_fleming": (-1.0, 1.0)}  # Pareto-optimal actions
PRESET = dict(
    hidden_sizes=(64, 64),
    batch_size=16,
    num_samples=20,
    target_update_period=10,
    epsilon_mean=0.01,
    checkpoint_every=0,
)


def front_coverage(actions: list[float], env_id: str, bins: int = 10) -> float:
    """Share of equal-width bins of the Pareto-optimal action interval that hold at least one solution."""
    low, high = FRONT[env_id]
    inside = [a for a in actions if low <= a <= high]
    hit = {min(int((a - low) / (high - low) * bins), bins - 1) for a in inside}
    return len(hit) / bins


def final_action(run_dir: str) -> float:
    """The trained policy's mean action (the bandit's single state is a zero vector)."""
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)
    args = dime_morl.Args(**ckpt["args"])
    policy = dime_morl.Policy(1, 1, args.hidden_sizes)
    policy.load_state_dict({k[7:]: v for k, v in ckpt["agent"].items() if k.startswith("policy.")})
    with torch.no_grad():
        return float(policy(torch.zeros(1, 1))[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--alphas", type=float, nargs="+", default=np.linspace(0, 1, 21).round(3).tolist())
    parser.add_argument("--steps", type=int, default=2000, help="learner steps per run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "figures", "toy_fronts.png"))
    opts = parser.parse_args()
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, env_id, method in itertools.product(SIGMA_MODES, FRONT, ("dime", "ls")):
            rows = []
            for alpha in opts.alphas:
                out = os.path.join(tmp, f"{mode}_{env_id}_{method}_{alpha}")
                args = dime_morl.Args(
                    env_id=env_id,
                    method=method,
                    alpha=alpha,
                    total_steps=opts.steps,
                    eval_every=opts.steps,
                    seed=opts.seed,
                    output_dir=out,
                    init_log_alpha_stddev=SIGMA_MODES[mode],
                    **{**PRESET, "checkpoint_every": opts.steps},
                )
                with contextlib.redirect_stdout(io.StringIO()):
                    results = dime_morl.main(args)
                (run_dir,) = [os.path.join(out, d) for d in os.listdir(out)]
                rows.append(
                    {"alpha": alpha, "action": final_action(run_dir), "mean": results["final"]["mean"]}
                )
            table[f"{mode}/{env_id}/{method}"] = rows
    print(f"{'sigma':<10}{'bandit':<17}{'method':<7}{'coverage':>9}  final mean action per α")
    for key, rows in table.items():
        mode, env_id, method = key.split("/")
        actions = " ".join(f"{r['action']:+.2f}" for r in rows)
        coverage = front_coverage([r["action"] for r in rows], env_id)
        print(f"{mode:<10}{env_id:<17}{method:<7}{coverage:>9.2f}  {actions}")
    print("α: " + " ".join(f"{a:.2f}" for a in opts.alphas))
    plot(table, opts.out)
    preset = {k: list(v) if isinstance(v, tuple) else v for k, v in PRESET.items()}
    summary = {"alphas": opts.alphas, "steps": opts.steps, "preset": preset, "sigma_modes": SIGMA_MODES}
    with open(os.path.splitext(opts.out)[0] + ".json", "w") as f:
        json.dump({**summary, "runs": table}, f, indent=1)
    print(f"wrote {opts.out}")


def plot(table: dict, path: str) -> None:
    """One row per σ mode, one column per bandit: final objective vectors over the true front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(SIGMA_MODES), len(FRONT), figsize=(9, 8), squeeze=False, layout="constrained"
    )
    for (row, mode), (col, env_id) in itertools.product(enumerate(SIGMA_MODES), enumerate(FRONT)):
        ax = axes[row, col]
        f = dime_morl.bandit_rewards(env_id, torch.linspace(*FRONT[env_id], 200)[:, None])
        ax.plot(f[:, 0], f[:, 1], color="0.75", lw=3, label="Pareto front", zorder=0)
        for method, marker in (("dime", "o"), ("ls", "x")):
            rows = table[f"{mode}/{env_id}/{method}"]
            pts = np.array([r["mean"] for r in rows])
            alphas = [r["alpha"] for r in rows]
            sc = ax.scatter(
                pts[:, 0],
                pts[:, 1],
                c=alphas,
                cmap="viridis",
                marker=marker,
                s=40,
                vmin=0,
                vmax=1,
                label=method.upper(),
            )
        ax.set(title=f"{env_id}, σ {mode}", xlabel="reward 1  (-f1)", ylabel="reward 2  (-f2)")
        ax.legend(loc="lower left")
    fig.colorbar(sc, ax=axes, label="trade-off α")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
