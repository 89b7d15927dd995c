"""Evaluate single molecules with one ASE calculator (runs inside workers; no torch import)."""
from __future__ import annotations

from typing import Callable

import numpy as np
from ase import Atoms


class ASEBackend:
    """Holds one ASE calculator (built by ``factory``) and evaluates single molecules with it."""

    def __init__(self, factory: Callable[[], object]):
        self._factory = factory
        self._calc = None
        self._last_identity = None

    def compute(self, key, numbers, positions, charge, spin):
        """(energy eV, forces eV/Å) for positions in Å."""
        identity = (np.asarray(numbers).tobytes(), int(charge), int(spin))
        if self._calc is None:
            self._calc = self._factory()
        elif identity != self._last_identity:
            # Charge/spin live in atoms.info, which ASE's change detection does not watch.
            self._calc.reset()
        self._last_identity = identity
        atoms = Atoms(numbers=np.asarray(numbers), positions=np.asarray(positions, dtype=np.float64))
        atoms.info["charge"] = int(charge)
        atoms.info["spin"] = int(spin)
        atoms.calc = self._calc
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        return float(energy), np.array(forces, dtype=np.float64)
