"""common/c51.py against a brute-force reference (the classic C51 loop of Bellemare et al., 2017).

Exactness checks run in float64; a float32 run checks the dtype the training code uses. Every random input
comes from a seeded ``torch.Generator`` so the suite is deterministic.
"""

import math

import pytest
import torch

from common.c51 import categorical_l2_project

F64 = torch.float64
SUPPORTS = [(-150.0, 150.0), (-10.0, 0.0), (0.0, 1.0)]


def reference_projection(probs, rewards, discounts, atoms):
    """Plain Python loops, independent of the code under test.

    For each source atom: Tz = clip(r + d * z_j), b = (Tz - v_min) / dz, l = floor(b), u = ceil(b); mass
    p * (u - b) goes to l and p * (b - l) to u, and all of it goes to l when l == u.
    """
    v_min, v_max, n = atoms[0].item(), atoms[-1].item(), len(atoms)
    dz = (v_max - v_min) / (n - 1)
    out = [[0.0] * n for _ in range(len(probs))]
    for row in range(len(probs)):
        r, d = rewards[row].item(), discounts[row].item()
        for j in range(n):
            tz = min(max(r + d * atoms[j].item(), v_min), v_max)
            b = (tz - v_min) / dz
            lo, hi = math.floor(b), math.ceil(b)
            p = probs[row, j].item()
            if lo == hi:
                out[row][lo] += p
            else:
                out[row][lo] += p * (hi - b)
                out[row][hi] += p * (b - lo)
    return torch.tensor(out, dtype=F64)


def random_case(batch, num_atoms, low, high, seed, dtype=F64):
    """Random pmfs, shifts and scales; rewards reach past both ends of the support so clipping is used."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.linspace(low, high, num_atoms, dtype=dtype)
    probs = torch.rand(batch, num_atoms, generator=g, dtype=dtype).mul(4).softmax(-1)
    span = high - low
    rewards = (torch.rand(batch, generator=g, dtype=dtype) - 0.5) * span
    discounts = torch.rand(batch, generator=g, dtype=dtype)
    discounts[0] = 0.0  # a terminal row
    if batch > 1:  # a row whose shifted atoms land exactly on support atoms (the l == u branch)
        rewards[1], discounts[1] = 2 * (atoms[1] - atoms[0]), 1.0
    return probs, rewards, discounts, atoms


@pytest.mark.parametrize("batch", [1, 7, 32])
@pytest.mark.parametrize("num_atoms", [2, 11, 51, 101])
@pytest.mark.parametrize("support", SUPPORTS)
def test_matches_brute_force_reference(batch, num_atoms, support):
    probs, rewards, discounts, atoms = random_case(batch, num_atoms, *support, seed=batch * 1000 + num_atoms)
    got = categorical_l2_project(probs, rewards, discounts, atoms)
    assert got.shape == (batch, num_atoms) and got.dtype == F64
    torch.testing.assert_close(got, reference_projection(probs, rewards, discounts, atoms), atol=1e-6, rtol=0)


@pytest.mark.parametrize("num_atoms", [2, 51])
@pytest.mark.parametrize("support", SUPPORTS)
def test_float32_matches_float64_reference(num_atoms, support):
    probs, rewards, discounts, atoms = random_case(
        16, num_atoms, *support, seed=num_atoms, dtype=torch.float32
    )
    got = categorical_l2_project(probs, rewards, discounts, atoms)
    assert got.dtype == torch.float32
    expected = reference_projection(probs.double(), rewards.double(), discounts.double(), atoms.double())
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_atoms", [2, 11, 101])
@pytest.mark.parametrize("support", SUPPORTS)
def test_mass_is_conserved_and_non_negative(num_atoms, support):
    probs, rewards, discounts, atoms = random_case(32, num_atoms, *support, seed=7 + num_atoms)
    rewards = rewards * 3  # push many rows far off the support as well
    got = categorical_l2_project(probs, rewards, discounts, atoms)
    torch.testing.assert_close(got.sum(-1), torch.ones(32, dtype=F64), atol=1e-12, rtol=0)
    assert (got >= 0).all()
    # Unnormalised rows keep their own mass too (the projection is linear, not a renormalisation).
    scaled = categorical_l2_project(
        probs * torch.arange(1, 33, dtype=F64)[:, None], rewards, discounts, atoms
    )
    torch.testing.assert_close(scaled.sum(-1), torch.arange(1, 33, dtype=F64), atol=1e-10, rtol=0)


@pytest.mark.parametrize("support", SUPPORTS)
def test_identity_shift_returns_the_input(support):
    probs, _, _, atoms = random_case(5, 51, *support, seed=0)
    ones, zeros = torch.ones(5, dtype=F64), torch.zeros(5, dtype=F64)
    got = categorical_l2_project(probs, zeros, ones, atoms)
    torch.testing.assert_close(got, probs, atol=1e-12, rtol=0)  # linspace atoms are exact to a few ulps


def test_identity_is_bit_exact_on_a_dyadic_support():
    # Atoms -8, -7, ..., 8 and dz = 1 are exact in binary, so nothing may move at all.
    probs, _, _, atoms = random_case(6, 17, -8.0, 8.0, seed=11)
    for dtype in (F64, torch.float32):
        p, z = probs.to(dtype), atoms.to(dtype)
        got = categorical_l2_project(p, torch.zeros(6, dtype=dtype), torch.ones(6, dtype=dtype), z)
        assert torch.equal(got, p)


@pytest.mark.parametrize("support", SUPPORTS)
def test_edges_clip_all_mass_to_the_end_atoms(support):
    probs, _, discounts, atoms = random_case(4, 21, *support, seed=1)
    discounts[-1] = 1.0
    span = support[1] - support[0]
    up = categorical_l2_project(probs, torch.full((4,), 1e3 * span, dtype=F64), discounts, atoms)
    down = categorical_l2_project(probs, torch.full((4,), -1e3 * span, dtype=F64), discounts, atoms)
    torch.testing.assert_close(up[:, -1], probs.sum(-1), atol=1e-12, rtol=0)
    torch.testing.assert_close(down[:, 0], probs.sum(-1), atol=1e-12, rtol=0)
    assert up[:, :-1].abs().max() == 0 and down[:, 1:].abs().max() == 0


def test_rows_use_their_own_shift_and_scale():
    atoms = torch.linspace(-5.0, 5.0, 11, dtype=F64)
    probs = torch.zeros(3, 11, dtype=F64)
    probs[:, 5] = 0.5  # half the mass at z = 0 ...
    probs[:, 9] = 0.5  # ... and half at z = 4
    rewards = torch.tensor([2.0, -3.5, 0.0], dtype=F64)
    discounts = torch.tensor([1.0, 0.5, 0.25], dtype=F64)
    got = categorical_l2_project(probs, rewards, discounts, atoms)
    expected = torch.zeros(3, 11, dtype=F64)
    expected[0, 7] = 0.5  # 2 + 1 * 0 = 2
    expected[0, 10] = 0.5  # 2 + 1 * 4 = 6, clipped to 5
    expected[1, 1] = expected[1, 2] = 0.25  # -3.5 + 0.5 * 0 = -3.5, halfway between -4 and -3
    expected[1, 3] = expected[1, 4] = 0.25  # -3.5 + 0.5 * 4 = -1.5, halfway between -2 and -1
    expected[2, 5] = 0.5  # 0 + 0.25 * 0 = 0
    expected[2, 6] = 0.5  # 0 + 0.25 * 4 = 1
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_batched_rows_equal_row_by_row_calls():
    # The same source pmf in every row, so any difference between output rows comes from that row's own
    # shift and scale; shifts stay inside the support so no two rows collapse onto the same edge atom.
    g = torch.Generator().manual_seed(5)
    atoms = torch.linspace(-10.0, 0.0, 51, dtype=F64)
    probs = torch.rand(1, 51, generator=g, dtype=F64).mul(4).softmax(-1).expand(9, 51)
    rewards = torch.linspace(-1.0, -5.0, 9, dtype=F64)
    discounts = torch.linspace(0.2, 0.9, 9, dtype=F64)
    got = categorical_l2_project(probs, rewards, discounts, atoms)
    for row in range(9):
        alone = categorical_l2_project(
            probs[row : row + 1], rewards[row : row + 1], discounts[row : row + 1], atoms
        )
        torch.testing.assert_close(got[row : row + 1], alone, atol=1e-14, rtol=0)
    assert (got[1:] - got[:-1]).abs().amax(-1).min() > 1e-3  # neighbouring rows really differ


@pytest.mark.parametrize(
    ("reward", "expected"),
    [
        (3.25, {3: 0.75, 4: 0.25}),  # between atoms 3 and 4, closer to 3
        (6.9, {6: 0.1, 7: 0.9}),
        (5.0, {5: 1.0}),  # exactly on an atom
        (12.0, {10: 1.0}),  # past v_max
        (-1.0, {0: 1.0}),  # below v_min
    ],
)
def test_discount_zero_projects_the_reward_alone(reward, expected):
    atoms = torch.linspace(0.0, 10.0, 11, dtype=F64)
    g = torch.Generator().manual_seed(2)
    probs = torch.rand(2, 11, generator=g, dtype=F64).softmax(-1)
    got = categorical_l2_project(probs, torch.full((2,), reward, dtype=F64), torch.zeros(2, dtype=F64), atoms)
    want = torch.zeros(2, 11, dtype=F64)
    for index, mass in expected.items():
        want[:, index] = mass
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)  # the source pmf no longer matters


def test_mixture_then_project_equals_project_then_average():
    g = torch.Generator().manual_seed(3)
    atoms = torch.linspace(-150.0, 150.0, 101, dtype=F64)
    num_pmfs, batch = 20, 8
    pmfs = torch.rand(num_pmfs, batch, 101, generator=g, dtype=F64).mul(5).softmax(-1)
    weights = torch.rand(num_pmfs, generator=g, dtype=F64)
    weights = weights / weights.sum()
    rewards = torch.randn(batch, generator=g, dtype=F64) * 60
    discounts = torch.rand(batch, generator=g, dtype=F64)
    mixed_first = categorical_l2_project(torch.einsum("n,nbj->bj", weights, pmfs), rewards, discounts, atoms)
    projected = torch.stack([categorical_l2_project(p, rewards, discounts, atoms) for p in pmfs])
    torch.testing.assert_close(mixed_first, torch.einsum("n,nbi->bi", weights, projected), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "probs_shape",
    [(3, 5), (3, 8), (7,), (3, 7, 1), (1, 3, 7)],
)
def test_bad_probs_shape_is_refused(probs_shape):
    atoms = torch.linspace(0.0, 1.0, 7)
    with pytest.raises(ValueError, match="probs must be"):
        categorical_l2_project(torch.ones(probs_shape), torch.zeros(3), torch.ones(3), atoms)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("dtype", "atol"), [(F64, 1e-12), (torch.float32, 1e-6)])
def test_cuda_matches_cpu(dtype, atol):
    probs, rewards, discounts, atoms = random_case(256, 101, -150.0, 150.0, seed=4, dtype=dtype)
    cpu = categorical_l2_project(probs, rewards, discounts, atoms)
    gpu = categorical_l2_project(*(t.cuda() for t in (probs, rewards, discounts, atoms)))
    assert gpu.is_cuda and gpu.dtype == dtype
    torch.testing.assert_close(gpu.cpu(), cpu, atol=atol, rtol=0)


@pytest.mark.parametrize(
    ("rewards_shape", "discounts_shape"), [((1,), (4,)), ((4,), (1,)), ((4, 1), (4,)), ((), (4,))]
)
def test_bad_rewards_or_discounts_shape_is_refused(rewards_shape, discounts_shape):
    """A [1] reward would broadcast into the shift but leave rows 1..B-1 without mass."""
    atoms = torch.linspace(0.0, 1.0, 7)
    with pytest.raises(ValueError, match="rewards and discounts must be"):
        categorical_l2_project(
            torch.ones(4, 7) / 7, torch.zeros(rewards_shape), torch.ones(discounts_shape), atoms
        )
