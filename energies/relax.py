"""Relax many conformers of one molecule with ASE optimizers on any EnergyModel.

All conformers advance in lockstep: at every step the still-running conformers are evaluated
as ONE EnergyBatch, so the energy's own parallelism is used (xTB worker pool, batched GPU
models), and each conformer's ASE optimizer then takes its step from those forces.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from ase import Atoms
from ase.optimize import FIRE, LBFGS

from energies.ase_calc import EnergyCalculator
from energies.base import EnergyBatch, EnergyModel

OPTIMIZERS = {"lbfgs": LBFGS, "fire": FIRE}


@dataclass
class RelaxResult:
    """coords [n, N, 3] Å; energies [n] eV; converged [n] bool; n_steps [n] optimizer steps.

    initial_energies [n] eV of the input coordinates; failures: (conformer index, reason) for
    conformers whose evaluation failed (they keep their last good coordinates and energy).
    """

    coords: np.ndarray
    energies: np.ndarray
    converged: np.ndarray
    n_steps: np.ndarray
    initial_energies: np.ndarray = None
    failures: list = field(default_factory=list)


def max_force(forces: np.ndarray) -> float:
    """Largest per-atom force norm (eV/Å): ASE's convergence measure."""
    return float(np.sqrt((np.asarray(forces) ** 2).sum(axis=1).max()))


def relax_conformers(
    energy: EnergyModel,
    numbers,
    coords,
    charge: int = 0,
    spin: int = 1,
    mol=None,
    fmax: float = 0.05,
    steps: int = 500,
    optimizer: str = "lbfgs",
    key: Optional[object] = None,
) -> RelaxResult:
    """Minimise each conformer (Å) until max force < fmax (eV/Å) or ``steps`` optimizer steps.

    numbers: [N] atomic numbers; coords: [n, N, 3] (or [N, 3]) Å; mol: RDKit mol for
    topology-based energies (MMFF). optimizer: "lbfgs" or "fire".
    """
    if optimizer.lower() not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    numbers = np.asarray(numbers, dtype=np.int64)
    coords = np.array(coords, dtype=np.float64)
    if coords.ndim == 2:
        coords = coords[None]
    if coords.ndim != 3 or coords.shape[1:] != (len(numbers), 3):
        raise ValueError(f"coords must be [n, {len(numbers)}, 3], got {list(coords.shape)}")
    n = coords.shape[0]
    atoms = [Atoms(numbers=numbers, positions=c) for c in coords]
    calcs = [EnergyCalculator(energy, charge=charge, spin=spin, mol=mol, key=key) for _ in range(n)]
    for a, c in zip(atoms, calcs):
        a.calc = c
    opts = [OPTIMIZERS[optimizer.lower()](a, logfile=None) for a in atoms]

    best = coords.copy()
    energies = np.full(n, np.nan)
    initial = np.full(n, np.nan)
    converged = np.zeros(n, dtype=bool)
    n_steps = np.zeros(n, dtype=np.int64)
    failures: list = []
    active = list(range(n))
    for step in range(steps + 1):
        if not active:
            break
        result = energy(_batch(numbers, [atoms[i].positions for i in active], charge, spin, mol, key))
        slices = _slices(len(numbers), len(active))
        reasons = dict(result.failures)
        still = []
        for j, i in enumerate(active):
            e = float(result.energy[j])
            f = result.forces[slices[j]].double().cpu().numpy()
            if j in reasons or not np.isfinite(e) or not np.isfinite(f).all():
                failures.append((i, reasons.get(j, "non-finite energy or forces")))
                continue  # keeps the last good coordinates and energy
            if step == 0:
                initial[i] = e
            energies[i] = e
            best[i] = atoms[i].positions
            if max_force(f) < fmax:
                converged[i] = True
                continue
            if step == steps:
                continue
            calcs[i].store(atoms[i], e, f)
            opts[i].step()  # reads the stored forces: no extra evaluation
            n_steps[i] += 1
            still.append(i)
        active = still
    return RelaxResult(best, energies, converged, n_steps, initial, failures)


def _batch(numbers, positions, charge, spin, mol, key) -> EnergyBatch:
    m = len(positions)
    return EnergyBatch.from_molecules(
        [numbers] * m,
        positions,
        charges=[charge] * m,
        spins=[spin] * m,
        mols=[mol] * m if mol is not None else None,
        keys=[key] * m if key is not None else None,
    )


def _slices(atoms_per_molecule: int, m: int) -> list[slice]:
    return [slice(k * atoms_per_molecule, (k + 1) * atoms_per_molecule) for k in range(m)]
