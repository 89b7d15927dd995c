"""Ground-truth metrics for the synthetic benchmarks (DW-4, LJ-13): energy, distance and coordinate W2.

All inputs are sample arrays in the ground-truth layout [S, n·d] (reduced units).
  energy W2      1-D 2-Wasserstein distance between the two sets of energies (headline metric)
  distance W2    1-D W2 between the pooled interatomic-distance distributions
  coordinate W2  exact optimal transport between COM-free flattened coordinates (equal set sizes):
                 W2 = sqrt(mean squared distance of the optimal assignment)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from adjoint_sampling.synthetic_systems import SyntheticSystem, energies_of, get_system, to_particles

METRICS = ("energy_w2", "distance_w2", "coordinate_w2")


class MetricError(ValueError):
    """Inputs the metrics cannot compare (empty, mismatched shapes)."""


def w2_1d(a: np.ndarray, b: np.ndarray, n_quantiles: int = 0) -> float:
    """Exact 1-D W2 between two empirical distributions (sorted matching; quantiles when sizes differ)."""
    a, b = np.sort(np.ravel(a).astype(np.float64)), np.sort(np.ravel(b).astype(np.float64))
    if not len(a) or not len(b):
        raise MetricError("W2 of an empty sample set")
    if len(a) == len(b) and not n_quantiles:
        return float(np.sqrt(np.mean((a - b) ** 2)))
    # unequal sizes: integrate (F_a^-1 - F_b^-1)^2 over a fine grid of quantile levels
    m = n_quantiles or 4 * max(len(a), len(b))
    q = (np.arange(m) + 0.5) / m
    qa = a[np.minimum((q * len(a)).astype(int), len(a) - 1)]
    qb = b[np.minimum((q * len(b)).astype(int), len(b) - 1)]
    return float(np.sqrt(np.mean((qa - qb) ** 2)))


def interatomic_distances(samples: np.ndarray, system: SyntheticSystem) -> np.ndarray:
    """All pair distances d_ij (i < j) of every sample, pooled -> [S · n(n-1)/2]."""
    x = to_particles(samples, system, center=False)
    i, j = np.triu_indices(system.n_particles, k=1)
    return np.linalg.norm(x[:, i] - x[:, j], axis=-1).ravel()


def coordinate_w2(a: np.ndarray, b: np.ndarray, system: SyntheticSystem) -> float:
    """Exact OT W2 between two equally sized sets of COM-free flattened coordinates."""
    if len(a) != len(b):
        raise MetricError(f"coordinate W2 needs equal set sizes, got {len(a)} and {len(b)}")
    xa = to_particles(a, system).reshape(len(a), -1)
    xb = to_particles(b, system).reshape(len(b), -1)
    cost = cdist(xa, xb, "sqeuclidean")
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


def sample_metrics(samples: np.ndarray, reference: np.ndarray, system: str | SyntheticSystem,
                   energy_options: Optional[dict] = None) -> dict:
    """energy_w2, distance_w2, coordinate_w2 of ``samples`` against ``reference`` (same size), plus
    the sample energy mean and the count of non-finite sample energies (left out of energy W2)."""
    sysm = get_system(system) if isinstance(system, str) else system
    e_s, e_r = energies_of(samples, sysm, energy_options), energies_of(reference, sysm, energy_options)
    finite = np.isfinite(e_s)
    return {
        "energy_w2": w2_1d(e_s[finite], e_r[np.isfinite(e_r)]) if finite.any() else float("nan"),
        "distance_w2": w2_1d(interatomic_distances(samples, sysm), interatomic_distances(reference, sysm)),
        "coordinate_w2": coordinate_w2(samples, reference, sysm),
        "energy_mean": float(np.mean(e_s[finite])) if finite.any() else float("nan"),
        "n_nonfinite": int((~finite).sum()),
    }


def subsample(data: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n rows drawn without replacement with a fixed seed (all rows when n >= len(data))."""
    if n >= len(data):
        return data
    return data[np.random.default_rng(seed).choice(len(data), n, replace=False)]


def comparison_table(columns: dict[str, dict], published: Optional[dict] = None) -> str:
    """Text table: one row per metric, one column per named result (e.g. sampler, base, floor)."""
    names = list(columns)
    head = f"{'metric':<15}" + "".join(f"{n:>14}" for n in names) + (f"{'published AS':>14}" if published else "")
    lines = [head, "-" * len(head)]
    for m in METRICS:
        row = f"{m:<15}" + "".join(f"{_fmt(columns[n].get(m)):>14}" for n in names)
        if published:
            row += f"{_fmt(published.get(m)):>14}"
        lines.append(row)
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if not np.isfinite(v):
        return str(v)
    return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.3g}"


def plot_histograms(path: str | Path, system: str | SyntheticSystem, reference: np.ndarray,
                    others: dict[str, np.ndarray], energy_options: Optional[dict] = None) -> Path:
    """PNG with the energy and interatomic-distance histograms of each sample set vs the ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sysm = get_system(system) if isinstance(system, str) else system
    e_ref = energies_of(reference, sysm, energy_options)
    lo, hi = np.percentile(e_ref, [0.5, 99.5])
    span = hi - lo
    e_bins = np.linspace(lo - 0.25 * span, hi + 0.25 * span, 80)
    d_ref = interatomic_distances(reference, sysm)
    d_bins = np.linspace(0, np.percentile(d_ref, 99.9) * 1.2, 80)
    fig, (ax_e, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
    ax_e.hist(e_ref, bins=e_bins, density=True, alpha=0.4, color="k", label="ground truth (test)")
    ax_d.hist(d_ref, bins=d_bins, density=True, alpha=0.4, color="k", label="ground truth (test)")
    for label, samples in others.items():
        e = energies_of(samples, sysm, energy_options)
        d = interatomic_distances(samples, sysm)
        # out-of-range values are dropped (not piled into the edge bin) and counted in the legend
        e_in = e[(e >= e_bins[0]) & (e <= e_bins[-1])]
        d_in = d[d <= d_bins[-1]]
        ax_e.hist(e_in, bins=e_bins, weights=np.full(len(e_in), 1.0 / len(e) / np.diff(e_bins)[0]),
                  histtype="step", lw=1.5, label=f"{label} ({100 * (1 - len(e_in) / len(e)):.0f}% outside)")
        ax_d.hist(d_in, bins=d_bins, weights=np.full(len(d_in), 1.0 / len(d) / np.diff(d_bins)[0]),
                  histtype="step", lw=1.5, label=f"{label} ({100 * (1 - len(d_in) / len(d)):.0f}% outside)")
    ax_e.set(xlabel="energy (reduced units)", ylabel="density", title=f"{sysm.name}: energy")
    ax_d.set(xlabel="interatomic distance", ylabel="density", title=f"{sysm.name}: pair distances")
    ax_e.legend(fontsize=8)
    ax_d.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
