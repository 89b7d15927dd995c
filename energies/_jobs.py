"""Convert an EnergyBatch into per-molecule jobs and worker outcomes back into an EnergyResult."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

from energies._pool import Job, Outcome
from energies.base import EnergyBatch, EnergyResult, UnsupportedMoleculeError


def molecule_key(batch: EnergyBatch, i: int, numbers: np.ndarray, charge: int, spin: int) -> object:
    """Cache identity of molecule i: its EnergyBatch key, else (elements, charge, spin)."""
    if batch.keys is not None and batch.keys[i] is not None:
        return batch.keys[i]
    return (numbers.tobytes(), charge, spin)


def batch_to_jobs(
    batch: EnergyBatch, precheck: Optional[Callable[[np.ndarray, int, int], None]] = None
) -> tuple[list[Job], list[Outcome]]:
    """Split a batch into jobs; molecules that cannot run (non-finite positions, unsupported
    elements via ``precheck`` raising UnsupportedMoleculeError) come back as failed outcomes."""
    numbers = batch.numbers.detach().cpu().numpy().astype(np.int64)
    positions = batch.positions.detach().cpu().to(torch.float64).numpy()
    charges = batch.charges.detach().cpu().numpy().astype(np.int64)
    spins = batch.spins_or_singlet().detach().cpu().numpy().astype(np.int64)
    jobs: list[Job] = []
    early: list[Outcome] = []
    for i, sl in enumerate(batch.molecule_slices()):
        z, x = numbers[sl], positions[sl]
        charge, spin = int(charges[i]), int(spins[i])
        if not np.isfinite(x).all():
            early.append(Outcome(i, float("nan"), None, "non-finite positions"))
            continue
        if precheck is not None:
            try:
                precheck(z, charge, spin)
            except UnsupportedMoleculeError as exc:
                early.append(Outcome(i, float("nan"), None, str(exc)))
                continue
        jobs.append(Job(i, molecule_key(batch, i, z, charge, spin), z, x, charge, spin))
    return jobs, early


def outcomes_to_result(batch: EnergyBatch, outcomes: Sequence[Outcome]) -> EnergyResult:
    """Assemble per-molecule outcomes into an EnergyResult on the batch's device.

    Energies are float64 whatever the input dtype (absolute energies of thousands of eV lose
    meV precision in float32); forces take the dtype of ``batch.positions``.

    Failed molecules get NaN energy and NaN forces and a (index, reason) failure entry.
    """
    b = batch.num_molecules
    energy = np.full(b, np.nan)
    forces = np.full((int(batch.numbers.shape[0]), 3), np.nan)
    slices = batch.molecule_slices()
    failures = []
    for o in sorted(outcomes, key=lambda o: o.index):
        if o.reason is None:
            energy[o.index] = o.energy
            forces[slices[o.index]] = o.forces
        else:
            failures.append((int(o.index), o.reason))
    dtype = batch.positions.dtype if batch.positions.is_floating_point() else torch.float64
    device = batch.positions.device
    return EnergyResult(
        energy=torch.as_tensor(energy, dtype=torch.float64, device=device),
        forces=torch.as_tensor(forces, dtype=dtype, device=device),
        failures=failures,
    )


def element_symbols(numbers: Sequence[int]) -> str:
    from rdkit.Chem import GetPeriodicTable

    table = GetPeriodicTable()
    return ", ".join(table.GetElementSymbol(int(z)) for z in numbers)
