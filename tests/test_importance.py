"""Path importance weights: log dP^u/dP^base from the SDE, weights against the target, resampling."""
import math

import pytest
import torch

from adjoint_sampling.graphs import collate, point_cloud_graph
from adjoint_sampling.importance import effective_sample_size, log_weights, normalized_weights, systematic_resample
from adjoint_sampling.loss import log_pbase
from adjoint_sampling.schedules import GeometricSchedule, time_grid
from adjoint_sampling.sde import integrate

N_PARTICLES, DIM = 4, 2
DOF = DIM * (N_PARTICLES - 1)


def _gaussian_paths(scale: float, s2: float, k: int = 4000, seed: int = 0, nfe: int = 100):
    """k paths of the controller scale·v*, v* the optimal control for the target N(0, s2·I) (COM-free).

    With the memoryless base, X_1 | X_t = x ~ N(x, α(t)²) and p*/p_base ∝ exp(−λ‖y‖²/2) with
    λ = 1/s2 − 1/h(1)², so v*(t, x) = ∇ log E[p*/p_base(X_1) | X_t = x] = −λ x / (1 + λ α(t)²).
    Returns (X_1 [k, n, d], log w [k]) with E = ‖x‖²/(2 s2) at τ = 1.
    """
    schedule = GeometricSchedule(sigma_min=0.01, sigma_max=2.0)
    lam = 1.0 / s2 - 1.0 / schedule.h1_sq

    def controller(t, x, graphs):
        alpha2 = schedule.h1_sq - schedule.h2(t.double())
        return scale * (-lam * x / (1.0 + lam * alpha2)).to(x.dtype)

    graphs = collate([point_cloud_graph(N_PARTICLES)] * k, [0])
    path = integrate(controller, graphs, schedule, time_grid("uniform", nfe), DIM,
                     torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = path.x1.reshape(k, N_PARTICLES, DIM)
    energy = (x ** 2).sum(dim=(1, 2)) / (2 * s2)
    lw = log_weights(energy, log_pbase(path.x1, graphs, schedule.h1_sq), path.log_rn, tau=1.0)
    return x, lw, path


def test_optimal_control_weights_become_constant_as_the_grid_is_refined():
    # constant in continuous time; holding v over a step leaves a spread that shrinks with the step
    ess = {}
    for nfe in (100, 1600):
        _, lw, path = _gaussian_paths(scale=1.0, s2=0.3, k=500, nfe=nfe)
        ess[nfe] = effective_sample_size(lw) / len(lw)
    assert ess[1600] > 0.95 and ess[100] < ess[1600] - 0.1
    # the stochastic integral is what makes log_rn differ from the cost path by path
    assert (path.log_rn - path.cost).abs().mean() > 0.1


@pytest.mark.parametrize("scale", [0.5, 0.75])
def test_weights_correct_a_wrong_control_to_the_target(scale):
    # an under-strength control leaves X_1 too wide; the weights pull it back (a proposal narrower than
    # the target, scale > 1, has too light tails for 4000 paths to correct: IS needs a wide proposal)
    s2 = 0.3
    x, lw, _ = _gaussian_paths(scale=scale, s2=s2)
    target = s2 * DOF  # E‖X_1‖² under N(0, s2) on the COM-free subspace
    sq = (x ** 2).sum(dim=(1, 2))
    raw = sq.mean().item()
    weighted = (normalized_weights(lw) * sq).sum().item()
    assert abs(raw - target) > 0.1 * target  # the mis-scaled control really is off
    assert abs(weighted - target) < 0.06 * target
    assert effective_sample_size(lw) / len(lw) < 0.9


def test_girsanov_identity_holds_for_any_control():
    # E_{P^u}[dP^base/dP^u] = 1: the reweighted controlled paths are base paths. A weak control keeps
    # the ratio's variance finite in practice (for the full v* it is dominated by rare tail paths).
    _, _, path = _gaussian_paths(scale=0.2, s2=0.3, seed=1)
    ratio = torch.exp(-path.log_rn)
    assert abs(ratio.mean().item() - 1.0) < 4 * ratio.std().item() / math.sqrt(len(ratio))
    # the cost alone (no ∫ u·dB) is not a density ratio: exp(−cost) averages far below 1
    assert torch.exp(-path.cost).mean().item() < 0.7


def test_systematic_resampling_by_hand():
    lw = torch.log(torch.tensor([0.5, 0.0, 0.25, 0.25], dtype=torch.float64))
    for seed in range(5):
        idx = systematic_resample(lw, 4, torch.Generator().manual_seed(seed))
        assert torch.bincount(idx, minlength=4).tolist() == [2, 0, 1, 1]
    # unnormalised log weights are fine: only ratios matter
    idx = systematic_resample(lw + 1000.0, 8, torch.Generator().manual_seed(0))
    assert torch.bincount(idx, minlength=4).tolist() == [4, 0, 2, 2]
    assert effective_sample_size(lw) == pytest.approx(1 / (0.25 + 0.0625 + 0.0625))


def test_nonfinite_energies_get_zero_weight_and_all_bad_is_an_error():
    energy = torch.tensor([1.0, float("nan"), float("inf"), 2.0], dtype=torch.float64)
    zeros = torch.zeros(4, dtype=torch.float64)
    lw = log_weights(energy, zeros, zeros, tau=0.5)
    w = normalized_weights(lw)
    assert w[1] == 0 and w[2] == 0
    assert w[0] / w[3] == pytest.approx(math.exp((2.0 - 1.0) / 0.5))
    with pytest.raises(ValueError, match="no path has a finite importance weight"):
        systematic_resample(torch.full((3,), -math.inf), 2)
    with pytest.raises(ValueError, match="tau must be positive"):
        log_weights(energy, zeros, zeros, tau=0.0)
    # the regulariser energy enters like E/τ
    lw_reg = log_weights(energy, zeros, zeros, tau=0.5, reg_energy=torch.tensor([0.0, 0.0, 0.0, 3.0]))
    assert lw_reg[3] == pytest.approx(lw[3].item() - 3.0)


def test_trainer_ess_is_per_molecule_and_never_mixes_molecules():
    from adjoint_sampling.trainer import _ess_per_molecule

    # molecule 0: two equal weights (ESS 2 of 2); molecule 1: one of two paths failed (ESS 1 of 2);
    # molecule 2: every path failed and is left out
    lw = torch.tensor([0.0, 0.0, 5.0, -math.inf, -math.inf], dtype=torch.float64)
    total, count = _ess_per_molecule(lw, [0, 0, 1, 1, 2])
    assert (total, count) == (pytest.approx(1.5), 2.0)
    # the same weights pooled as one molecule would give an ESS of about 1 of 5
    assert effective_sample_size(lw) < 1.05
