"""Categorical (C51) projection onto a fixed, evenly spaced support (Bellemare et al., 2017).

The distributional Bellman target of a categorical return distribution with probabilities ``p`` on atoms
``z`` is the distribution of ``r + discount * z``. Its atoms no longer sit on the support, so it is
projected back with the L2 (Cramér) projection used by C51, D4PG and Acme's DMPO:

    target_i = sum_j p_j * clip(1 - |clip(r + discount * z_j, v_min, v_max) - z_i| / delta_z, 0, 1)

Shape letters: B batch rows, J source atoms (the support itself), I target atoms (the support).

Each row may have its own shift ``r`` and scale ``discount`` (n-step returns, terminal masks). The
projection is linear in ``p``, so projecting a mixture of pmfs equals mixing the projected pmfs.
Each shifted atom lands between two neighbouring support atoms and splits its mass between them, so the
kernel above has at most two non-zero entries per source atom: the projection is two ``scatter_add_``
calls, O(B·J) instead of the dense O(B·J·I). On CUDA, atomics may reorder the float sums (last-bit
differences) unless ``torch.use_deterministic_algorithms(True)``. No gradient is needed through targets.
"""

import torch


def categorical_l2_project(
    probs: torch.Tensor, rewards: torch.Tensor, discounts: torch.Tensor, atoms: torch.Tensor
) -> torch.Tensor:
    """Project the distribution of ``rewards + discounts * atoms`` (weights ``probs``) onto ``atoms``.

    Args:
        probs: [B, J] probabilities of the source distribution on ``atoms`` (rows sum to 1).
        rewards: [B] per-row shift (e.g. the n-step return).
        discounts: [B] per-row scale (e.g. gamma**k times the product of continuation flags).
        atoms: [I] evenly spaced support z_0 < ... < z_{I-1}; the source atoms are the same support.

    Returns:
        [B, I] probabilities on ``atoms``; each row keeps the mass of the corresponding ``probs`` row.
    """
    num_atoms = atoms.shape[0]
    if probs.dim() != 2 or probs.shape[1] != num_atoms:
        raise ValueError(f"probs must be [B, {num_atoms}], got {tuple(probs.shape)}")
    # Shapes that broadcast otherwise would lose mass from rows.
    if rewards.shape != probs.shape[:1] or discounts.shape != probs.shape[:1]:
        raise ValueError(
            f"rewards and discounts must be [{probs.shape[0]}], got {tuple(rewards.shape)} and "
            f"{tuple(discounts.shape)}"
        )
    v_min, v_max = atoms[0], atoms[-1]
    delta_z = (v_max - v_min) / (num_atoms - 1)
    shifted = (rewards[:, None] + discounts[:, None] * atoms[None, :]).clamp(v_min, v_max)  # [B, J]
    # Each shifted atom's fractional index on the support splits its mass between the atoms around it: the
    # share `upper_weight` goes one atom up (none at v_max, where upper = lower).
    position = ((shifted - v_min) / delta_z).clamp(0, num_atoms - 1)  # [B, J]
    lower = position.floor()
    upper_weight = position - lower
    lower = lower.long()
    upper = (lower + 1).clamp(max=num_atoms - 1)
    projected = torch.zeros_like(probs)
    projected.scatter_add_(1, lower, probs * (1.0 - upper_weight))
    projected.scatter_add_(1, upper, probs * upper_weight)
    return projected
