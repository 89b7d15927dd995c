"""The one small contract every energy model in this package follows.

Units everywhere: positions in Å, energies in eV, forces in eV/Å.

An energy model takes a batch of molecules laid out as flat per-atom arrays
(``numbers``, ``positions``, ``batch`` index) plus per-molecule total charge and
spin multiplicity, and returns one energy per molecule and one force vector per
atom. A molecule whose evaluation failed (SCF not converged, worker crash,
non-physical geometry) gets a non-finite energy and non-finite forces instead
of raising: callers filter those out and count them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Container, Optional, Sequence

import numpy as np
import torch


class UnsupportedMoleculeError(ValueError):
    """A molecule holds an element or charge state the chosen energy cannot handle."""


@dataclass
class EnergyBatch:
    """A batch of molecules to evaluate.

    numbers:   [N] int64 atomic numbers of all atoms of all molecules, concatenated.
    positions: [N, 3] float positions in Å.
    batch:     [N] int64 index of the molecule each atom belongs to (0..B-1, sorted).
    charges:   [B] int64 total charge of each molecule (e).
    spins:     [B] int64 spin multiplicity 2S+1 of each molecule (1 = singlet).
    mols:      optional list of B RDKit molecules (explicit hydrogens, same atom order)
               for energies that need bond topology (MMFF).
    keys:      optional list of B hashable identities (e.g. SMILES) so that energies can
               reuse a per-molecule calculator across calls.
    """

    numbers: torch.Tensor
    positions: torch.Tensor
    batch: torch.Tensor
    charges: torch.Tensor
    spins: Optional[torch.Tensor] = None
    mols: Optional[list] = None
    keys: Optional[list] = None

    @property
    def num_molecules(self) -> int:
        return int(self.charges.shape[0])

    def spins_or_singlet(self) -> torch.Tensor:
        if self.spins is not None:
            return self.spins
        return torch.ones_like(self.charges)

    def molecule_slices(self) -> list[slice]:
        """Atom slices of each molecule (atoms of a molecule are contiguous)."""
        counts = torch.bincount(self.batch, minlength=self.num_molecules).tolist()
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        return [slice(int(starts[i]), int(starts[i + 1])) for i in range(len(counts))]

    @staticmethod
    def from_molecules(
        numbers: Sequence[np.ndarray],
        positions: Sequence[np.ndarray],
        charges: Optional[Sequence[int]] = None,
        spins: Optional[Sequence[int]] = None,
        mols: Optional[list] = None,
        keys: Optional[list] = None,
    ) -> "EnergyBatch":
        """Build a batch from per-molecule arrays (positions in Å)."""
        n = [len(z) for z in numbers]
        b = len(n)
        return EnergyBatch(
            numbers=torch.as_tensor(np.concatenate(numbers), dtype=torch.long),
            positions=torch.as_tensor(np.concatenate(positions), dtype=torch.float64),
            batch=torch.repeat_interleave(torch.arange(b), torch.as_tensor(n)),
            charges=torch.as_tensor(list(charges) if charges is not None else [0] * b, dtype=torch.long),
            spins=None if spins is None else torch.as_tensor(list(spins), dtype=torch.long),
            mols=mols,
            keys=keys,
        )


@dataclass
class EnergyResult:
    """energy: [B] eV (non-finite where evaluation failed); forces: [N, 3] eV/Å."""

    energy: torch.Tensor
    forces: torch.Tensor
    failures: list = field(default_factory=list)  # (molecule index, reason) pairs

    def finite_mask(self, batch: torch.Tensor) -> torch.Tensor:
        """[B] bool: True where both the energy and every force of the molecule are finite."""
        ok = torch.isfinite(self.energy)
        bad_atoms = ~torch.isfinite(self.forces).all(dim=1)
        if bad_atoms.any():
            ok = ok.clone()
            ok[batch[bad_atoms].unique()] = False
        return ok


class EnergyModel:
    """Base class: subclasses implement ``evaluate`` and declare what they support.

    supported_elements: atomic numbers the model can handle (None = any).
    """

    name: str = "energy"
    supported_elements: Optional[frozenset] = None
    # Allowed total charges (any container supporting ``in``, e.g. range(-2, 3)); None = any.
    supported_charges: Optional[Container] = None
    needs_mols: bool = False  # True when the model reads EnergyBatch.mols

    def evaluate(self, batch: EnergyBatch) -> EnergyResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, batch: EnergyBatch) -> EnergyResult:
        return self.evaluate(batch)

    def check_supported(
        self, numbers: Sequence[int], charge: int = 0, spin: int = 1, name: str = "molecule", mol=None
    ) -> None:
        """Raise UnsupportedMoleculeError naming the molecule and the offending element/charge.

        ``mol`` (optional RDKit molecule) lets topology-based energies check their parameters.
        """
        if self.supported_charges is not None and int(charge) not in self.supported_charges:
            raise UnsupportedMoleculeError(f"{name}: total charge {int(charge):+d} not supported by energy '{self.name}'")
        if self.supported_elements is not None:
            bad = sorted({int(z) for z in numbers} - set(self.supported_elements))
            if bad:
                from rdkit.Chem import GetPeriodicTable

                symbols = ", ".join(GetPeriodicTable().GetElementSymbol(z) for z in bad)
                raise UnsupportedMoleculeError(
                    f"{name}: element(s) {symbols} not supported by energy '{self.name}'"
                )

    def close(self) -> None:
        """Release worker processes or devices. Safe to call twice."""

    def __enter__(self) -> "EnergyModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
