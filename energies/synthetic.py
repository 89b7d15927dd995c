"""Synthetic particle energies of the Adjoint Sampling benchmarks: DW-4 and LJ-13 (paper Table 1).

Units are reduced (dimensionless lengths and energies, τ = 1); the energy contract's Å / eV labels
apply only nominally. Both energies are vectorised over a batch of equally sized particle systems:
``EnergyBatch.positions`` is [B·n, d] with d = 2 (DW-4) or 3 (LJ-13).

DW-4 (4 particles, 2-D), a sum over unordered pairs i < j:
    E(x) = Σ_{i<j} a (d_ij − d0) + b (d_ij − d0)² + c (d_ij − d0)⁴,   a=0, b=−4, c=0.9, d0=4.
LJ-13 (13 particles, 3-D), Lennard-Jones summed over *ordered* pairs i ≠ j (twice the i < j sum)
plus a harmonic tether to the centre of mass:
    E(x) = Σ_{i≠j} ε[(r_m/d_ij)^12 − 2 (r_m/d_ij)^6] + ½ Σ_i ‖x_i − x̄‖²,   ε = r_m = 1.

The pair conventions are the ones the ground-truth samples in ``shared/data/synthetic`` follow at
τ = 1: for a Boltzmann density the identities E[x·∇E] = τ·dof and E[ΔE] = E[‖∇E‖²]/τ hold, and only
these conventions satisfy both on the given samples (see docs/synthetic.md). ``pairs`` switches it.
"""
from __future__ import annotations

import torch

from energies.base import EnergyBatch, EnergyModel, EnergyResult

PAIR_CONVENTIONS = {"i<j": 1.0, "ordered": 2.0}  # factor on the i < j sum


class SyntheticEnergyError(ValueError):
    """Bad input for a synthetic energy (wrong particle count, dimension or option)."""


def pair_distances(x: torch.Tensor) -> torch.Tensor:
    """Distances d_ij (i < j) of [..., n, d] positions -> [..., n(n-1)/2]."""
    n = x.shape[-2]
    i, j = torch.triu_indices(n, n, offset=1, device=x.device)
    return (x[..., i, :] - x[..., j, :]).norm(dim=-1)


def double_well_energy(
    x: torch.Tensor, a: float = 0.0, b: float = -4.0, c: float = 0.9, d0: float = 4.0, pair_factor: float = 1.0
) -> torch.Tensor:
    """DW-n energy of [..., n, d] positions -> [...] (sum over i < j, times pair_factor)."""
    r = pair_distances(x) - d0
    return pair_factor * (a * r + b * r**2 + c * r**4).sum(-1)


def lennard_jones_energy(
    x: torch.Tensor, epsilon: float = 1.0, rm: float = 1.0, oscillator: float = 0.5, pair_factor: float = 2.0
) -> torch.Tensor:
    """LJ-n energy of [..., n, d] positions -> [...]: pair_factor·Σ_{i<j} LJ + oscillator·Σ‖x_i − x̄‖²."""
    s6 = (rm / pair_distances(x)) ** 6
    lj = pair_factor * epsilon * (s6 * s6 - 2 * s6).sum(-1)
    centred = x - x.mean(dim=-2, keepdim=True)
    return lj + oscillator * (centred**2).sum((-2, -1))


class ParticleEnergy(EnergyModel):
    """A pair energy of identical particles; subclasses set n_particles, dim and ``energy_fn``."""

    n_particles: int = 0
    dim: int = 0

    def energy_fn(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _systems(self, batch: EnergyBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions as [B, n, d] (and the atom order used), checking every system has n particles in d dimensions."""
        pos = batch.positions
        if pos.dim() != 2 or pos.shape[1] != self.dim:
            raise SyntheticEnergyError(f"energy '{self.name}' needs positions of shape [N, {self.dim}], got {tuple(pos.shape)}")
        counts = torch.bincount(batch.batch, minlength=batch.num_molecules)
        if (counts != self.n_particles).any():
            raise SyntheticEnergyError(
                f"energy '{self.name}' needs {self.n_particles} particles per system, got counts {sorted(set(counts.tolist()))}"
            )
        order = torch.argsort(batch.batch, stable=True)
        return pos[order].reshape(batch.num_molecules, self.n_particles, self.dim), order

    def energy_and_forces(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, n, d] positions -> energies [B] and forces −∇E [B, n, d] (float64, autograd)."""
        with torch.enable_grad():
            x = x.detach().double().requires_grad_(True)
            e = self.energy_fn(x)
            (grad,) = torch.autograd.grad(e.sum(), x)
        return e.detach(), -grad

    def evaluate(self, batch: EnergyBatch) -> EnergyResult:
        x, order = self._systems(batch)
        energy, forces = self.energy_and_forces(x)
        flat = torch.empty_like(forces.reshape(-1, self.dim))
        flat[order] = forces.reshape(-1, self.dim)
        return EnergyResult(energy=energy, forces=flat)


class DoubleWellEnergy(ParticleEnergy):
    """DW-4: 4 particles in 2-D, double-well pair potential in the pair distance (i < j sum)."""

    name = "dw4"

    def __init__(self, n_particles: int = 4, dim: int = 2, a: float = 0.0, b: float = -4.0, c: float = 0.9,
                 d0: float = 4.0, pairs: str = "i<j"):
        self.n_particles, self.dim = int(n_particles), int(dim)
        self.params = dict(a=float(a), b=float(b), c=float(c), d0=float(d0), pair_factor=_pair_factor(pairs))

    def energy_fn(self, x: torch.Tensor) -> torch.Tensor:
        return double_well_energy(x, **self.params)


class LennardJonesEnergy(ParticleEnergy):
    """LJ-13: 13 particles in 3-D, Lennard-Jones (ordered-pair sum) + ½Σ‖x_i − x̄‖² tether."""

    name = "lj13"

    def __init__(self, n_particles: int = 13, dim: int = 3, epsilon: float = 1.0, rm: float = 1.0,
                 oscillator: float = 0.5, pairs: str = "ordered"):
        self.n_particles, self.dim = int(n_particles), int(dim)
        self.params = dict(epsilon=float(epsilon), rm=float(rm), oscillator=float(oscillator),
                           pair_factor=_pair_factor(pairs))

    def energy_fn(self, x: torch.Tensor) -> torch.Tensor:
        return lennard_jones_energy(x, **self.params)


def _pair_factor(pairs: str) -> float:
    if pairs not in PAIR_CONVENTIONS:
        raise SyntheticEnergyError(f"unknown pair convention '{pairs}' (known: {', '.join(PAIR_CONVENTIONS)})")
    return PAIR_CONVENTIONS[pairs]


def _factory(cls):
    def make(cfg) -> EnergyModel:
        try:
            return cls(**cfg.options)
        except TypeError as exc:
            raise SyntheticEnergyError(f"energy '{cls.name}': bad energy.options ({exc})") from None

    return make


def register_synthetic() -> None:
    """Add ``dw4`` and ``lj13`` to the energy registry (called by energies.registry at import)."""
    from energies.registry import _REGISTRY, register

    specs = [
        ("dw4", DoubleWellEnergy, "DW-4 synthetic benchmark: 4 particles, 2-D double well (options: a b c d0 pairs)"),
        ("lj13", LennardJonesEnergy, "LJ-13 synthetic benchmark: 13 particles, 3-D Lennard-Jones + harmonic tether"),
    ]
    for name, cls, text in specs:
        if name not in _REGISTRY:
            register(name, _factory(cls), text, requirements=("torch",),
                     supported_elements="identical particles (node type 0)", supported_charges="n/a")
