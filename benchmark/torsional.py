"""Ground truth for torsional sampling on real molecules: the exact torsional Boltzmann density on a grid.

For a molecule with m ≤ 3 rotatable bonds and a fixed seed conformer, p*(θ) ∝ exp(−E(x(θ))/τ) on the
flat torus is evaluated on a regular grid of G^m cell centres (energies in eV, τ in eV, angles in
radians). Sampled torsions are compared with its per-torsion marginals by the circular W1 distance
and by basin populations (anti |θ| > 2π/3, gauche+ 0 < θ ≤ 2π/3, gauche− −2π/3 < θ ≤ 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

BASINS = ("anti", "gauche+", "gauche-")


@dataclass
class GridDensity:
    """Grid cell centres [G] (radians) and the normalised density over the m-D grid [G]*m (sums to 1)."""

    centres: np.ndarray
    probs: np.ndarray

    @property
    def m(self) -> int:
        return self.probs.ndim

    def marginal(self, k: int) -> np.ndarray:
        """Probability mass [G] of torsion k's cells."""
        axes = tuple(i for i in range(self.m) if i != k)
        return self.probs.sum(axis=axes) if axes else self.probs


def grid_centres(points: int) -> np.ndarray:
    """``points`` cell centres covering [−π, π) evenly (radians)."""
    width = 2 * math.pi / points
    return -math.pi + width * (np.arange(points) + 0.5)


def grid_density(energy_of: Callable[[np.ndarray], np.ndarray], m: int, points: int, tau: float,
                 chunk: int = 4096) -> GridDensity:
    """Evaluate energy_of(θ [k, m]) -> E [k] (eV) on the grid and normalise exp(−E/τ).

    Non-finite energies get zero weight. tau in eV.
    """
    if not 1 <= m <= 3:
        raise ValueError(f"a grid ground truth needs 1 to 3 torsions, this molecule has {m}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    centres = grid_centres(points)
    mesh = np.stack(np.meshgrid(*([centres] * m), indexing="ij"), axis=-1).reshape(-1, m)
    energies = np.concatenate([np.asarray(energy_of(mesh[i:i + chunk]), dtype=np.float64)
                               for i in range(0, len(mesh), chunk)])
    logp = np.where(np.isfinite(energies), -energies / tau, -np.inf)
    logp -= logp.max()
    p = np.exp(logp)
    return GridDensity(centres, (p / p.sum()).reshape([points] * m))


def _wrap(theta) -> np.ndarray:
    return (np.asarray(theta, dtype=np.float64) + math.pi) % (2 * math.pi) - math.pi


def _fine_points(n: int = 7200) -> np.ndarray:
    return np.linspace(-math.pi, math.pi, n + 1)


def _grid_cdf(centres: np.ndarray, mass: np.ndarray, x: np.ndarray) -> np.ndarray:
    """CDF at x of the piecewise-constant density that spreads each cell's mass over the cell."""
    width = 2 * math.pi / len(centres)
    edges = np.concatenate([[-math.pi], -math.pi + width * np.arange(1, len(centres) + 1)])
    cdf_edges = np.concatenate([[0.0], np.cumsum(mass) / mass.sum()])
    return np.interp(x, edges, cdf_edges)


def _sample_cdf(theta: np.ndarray, x: np.ndarray, weights=None) -> np.ndarray:
    theta = np.asarray(theta, dtype=np.float64)
    order = np.argsort(theta)
    w = np.ones_like(theta) if weights is None else np.asarray(weights, dtype=np.float64)
    cum = np.concatenate([[0.0], np.cumsum(w[order]) / w.sum()])
    return cum[np.searchsorted(theta[order], x, side="right")]


def circular_w1(theta: np.ndarray, centres: np.ndarray, mass: np.ndarray) -> float:
    """W1 on the circle (radians) between samples θ [n] and a grid marginal (cell centres, masses).

    ∫ |F_s(x) − F_g(x) − c| dx over [−π, π) with c the median of F_s − F_g (the optimal rotation of
    the cut point), evaluated on 7200 sub-intervals.
    """
    x = _fine_points()
    diff = _sample_cdf(_wrap(theta), x) - _grid_cdf(centres, mass, x)
    mid = 0.5 * (diff[1:] + diff[:-1])
    c = np.median(mid)
    return float(np.abs(mid - c).sum() * (x[1] - x[0]))


def circular_w1_samples(theta_a: np.ndarray, theta_b: np.ndarray) -> float:
    """W1 on the circle between two sample sets (radians)."""
    x = _fine_points()
    diff = _sample_cdf(_wrap(theta_a), x) - _sample_cdf(_wrap(theta_b), x)
    mid = 0.5 * (diff[1:] + diff[:-1])
    return float(np.abs(mid - np.median(mid)).sum() * (x[1] - x[0]))


def basin_of(theta: np.ndarray) -> np.ndarray:
    """Basin index per angle: 0 anti (|θ| > 2π/3), 1 gauche+ (0 < θ ≤ 2π/3), 2 gauche− (otherwise)."""
    theta = _wrap(theta)
    return np.where(np.abs(theta) > 2 * math.pi / 3, 0, np.where(theta > 0, 1, 2))


def basin_populations(theta: np.ndarray) -> np.ndarray:
    """Fractions [3] of samples in anti, gauche+, gauche−."""
    b = basin_of(theta)
    return np.bincount(b, minlength=3) / max(len(b), 1)


def grid_basin_populations(centres: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Basin masses [3] of a grid marginal (cells assigned by their centre; use a grid whose cell
    edges fall on ±2π/3 and 0, i.e. a multiple of 6 points, so that no cell straddles a border)."""
    b = basin_of(centres)
    return np.array([mass[b == i].sum() for i in range(3)]) / mass.sum()
