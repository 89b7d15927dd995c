"""Importance weights of sampled paths against the Boltzmann target, their ESS, and resampling.

The sampler is trained so that its path measure P^u matches the target path measure
P*(X) = P^base(X | X_1) p*(X_1) with p* ∝ exp(−E/τ − E_reg). Any remaining mismatch is exactly
measurable per path, because both measures are known up to log Z:

    log w = log dP*/dP^u = −E(X_1)/τ − E_reg(X_1) − log p_1^base(X_1) − log dP^u/dP^base − log Z

(log dP^u/dP^base comes with every path from ``sde.integrate``). Self-normalising over a set of
paths of one molecule removes log Z. The weights give a data-free quality score (the effective
sample size: 100 % for a perfect sampler) and, by resampling, samples corrected toward p*.
Energies in eV and τ in eV (reduced units for the synthetic systems).
"""
from __future__ import annotations

from typing import Optional

import torch

from adjoint_sampling.graphs import GraphBatch
from adjoint_sampling.regularizer import regularizer_energy
from adjoint_sampling.spaces import CartesianSpace, StateSpace


def log_weights(energy: torch.Tensor, log_p1: torch.Tensor, log_rn: torch.Tensor, tau: float,
                reg_energy: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Unnormalised log importance weights [B] (float64) of paths of one molecule.

    energy: E(X_1) in eV [B]; log_p1: log p_1^base(X_1) [B]; log_rn: log dP^u/dP^base [B];
    tau: temperature in eV; reg_energy: E_reg(X_1) (dimensionless) [B], if the run used one.
    A path whose energy is not finite gets weight 0 (log w = −inf).
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    lw = -energy.double() / tau - log_p1.double() - log_rn.double()
    if reg_energy is not None:
        lw = lw - reg_energy.double()
    return torch.where(torch.isfinite(lw), lw, torch.full_like(lw, -torch.inf))


def path_log_weights(x1: torch.Tensor, graphs: GraphBatch, energy: torch.Tensor, log_rn: torch.Tensor,
                     h1_sq: float, tau: float, reg_alpha: float = 0.0, space: Optional[StateSpace] = None,
                     positions: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``log_weights`` of simulated paths from their terminal states x1 [R, d] and graphs.

    Adds what the states determine: log p_1^base(X_1) with the schedule's h(1)² and, when
    reg_alpha > 0, the bond-structure regulariser of the positions (default: x1 itself, Cartesian).
    space defaults to Cartesian. Result on the CPU [B].
    """
    space = space or CartesianSpace(x1.shape[-1])
    lp = space.log_pbase(x1, graphs, h1_sq).cpu()
    pos = positions if positions is not None else space.positions(x1, graphs)
    reg = regularizer_energy(pos, graphs, reg_alpha).cpu() if reg_alpha else None
    return log_weights(energy.cpu(), lp, log_rn.cpu(), tau, reg)


def normalized_weights(log_w: torch.Tensor) -> torch.Tensor:
    """Self-normalised weights [B] summing to 1; ValueError if no path has a finite weight."""
    log_w = log_w.double()
    if not torch.isfinite(log_w).any():
        raise ValueError("no path has a finite importance weight (every energy was non-finite)")
    return torch.softmax(log_w, dim=0)


def effective_sample_size(log_w: torch.Tensor) -> float:
    """Kish effective sample size (Σw)²/Σw² of the paths, between 1 and B."""
    w = normalized_weights(log_w)
    return float(1.0 / (w ** 2).sum())


def systematic_resample(log_w: torch.Tensor, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """n indices [n] into the paths, drawn with probability ∝ w (systematic resampling).

    One uniform offset for all n draws: each path is picked ⌊n·w⌋ or ⌈n·w⌉ times, which adds less
    noise than independent (multinomial) draws. Indices come out sorted.
    """
    if n < 1:
        raise ValueError(f"number of resampled paths must be >= 1, got {n}")
    w = normalized_weights(log_w).cpu()
    cdf = torch.cumsum(w, 0)
    cdf[-1] = 1.0  # rounding must not let a point fall past the last path
    u = (torch.rand((), generator=generator, dtype=torch.float64) + torch.arange(n, dtype=torch.float64)) / n
    return torch.searchsorted(cdf, u, right=True).clamp_max(len(w) - 1)
