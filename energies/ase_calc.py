"""ASE both ways: any ASE calculator as an EnergyModel, and any EnergyModel as an ASE calculator.

Charge and spin travel through ``atoms.info["charge"]`` (e) and ``atoms.info["spin"]``
(multiplicity 2S+1), the convention fairchem's ASE calculator also reads.
"""
from __future__ import annotations

import functools
import importlib
import pickle
from typing import Callable, Optional, Union

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import CalculationFailed, Calculator, all_changes

from energies._jobs import batch_to_jobs, outcomes_to_result
from energies._ase_backend import ASEBackend
from energies._pool import SerialRunner, WorkerPool
from energies.base import EnergyBatch, EnergyModel, EnergyResult


def import_object(path: str):
    """Import ``package.module.Name``; ValueError with the reason when that fails."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"expected 'module.Name', got {path!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {path!r}: {exc}") from exc


def _picklable(obj) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001 - lambdas, closures, objects holding handles
        return False
    return True


class ASECalculatorEnergy(EnergyModel):
    """Any ASE calculator as an EnergyModel (Å in, eV and eV/Å out).

    calculator: an ASE Calculator class, its import path ``"module.Class"``, or a zero-argument
        factory returning a calculator instance.
    calculator_kwargs: constructor keyword arguments when ``calculator`` is a class or path.
    workers: worker processes; used only when the factory can be pickled (a class or path with
        picklable kwargs, or a module-level function); otherwise molecules run in this process.
    supported_elements: optional set of atomic numbers to declare.
    """

    name = "ase"

    def __init__(
        self,
        calculator: Union[str, type, Callable[[], Calculator]],
        calculator_kwargs: Optional[dict] = None,
        workers: int = 0,
        timeout_s: float = 120.0,
        supported_elements: Optional[frozenset] = None,
    ):
        if isinstance(calculator, str):
            calculator = import_object(calculator)
        if not callable(calculator):
            raise ValueError(f"calculator must be a class, import path or factory, got {calculator!r}")
        kwargs = dict(calculator_kwargs or {})
        factory = functools.partial(calculator, **kwargs) if kwargs or isinstance(calculator, type) else calculator
        self.name = f"ase:{getattr(calculator, '__module__', '?')}.{getattr(calculator, '__qualname__', repr(calculator))}"
        if supported_elements is not None:
            self.supported_elements = frozenset(supported_elements)
        make_backend = functools.partial(ASEBackend, factory)
        self.parallel = workers >= 1 and _picklable(make_backend)
        if self.parallel:
            self._runner = WorkerPool(make_backend, int(workers), timeout_s=timeout_s)
        else:
            self._runner = SerialRunner(make_backend)

    def _precheck(self, numbers: np.ndarray, charge: int, spin: int) -> None:
        self.check_supported(numbers, charge, spin)

    def evaluate(self, batch: EnergyBatch) -> EnergyResult:
        """Energies [B] (eV) and forces [N, 3] (eV/Å); calculator errors fail single molecules."""
        if self._runner is None:
            raise RuntimeError("ASECalculatorEnergy was closed")
        jobs, early = batch_to_jobs(batch, precheck=self._precheck)
        outcomes = self._runner.run(jobs, [float(len(j.numbers)) ** 2 for j in jobs])
        return outcomes_to_result(batch, list(early) + list(outcomes))

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None


class EnergyCalculator(Calculator):
    """An EnergyModel as an ASE calculator (energy in eV, forces in eV/Å).

    charge, spin (multiplicity), mol (RDKit, for MMFF) and key are fixed here, or read per
    call from ``atoms.info["charge"]``, ``["spin"]``, ``["mol"]``. A failed evaluation raises
    ``ase.calculators.calculator.CalculationFailed`` with the energy's reason.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        energy: EnergyModel,
        charge: Optional[int] = None,
        spin: Optional[int] = None,
        mol=None,
        key=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.energy_model = energy
        self.charge = charge
        self.spin = spin
        self.mol = mol
        self.key = key

    def _batch(self, atoms: Atoms) -> EnergyBatch:
        charge = self.charge if self.charge is not None else int(atoms.info.get("charge", 0))
        spin = self.spin if self.spin is not None else int(atoms.info.get("spin", 1))
        mol = self.mol if self.mol is not None else atoms.info.get("mol")
        return EnergyBatch.from_molecules(
            [atoms.get_atomic_numbers()],
            [atoms.get_positions()],
            charges=[charge],
            spins=[spin],
            mols=[mol] if mol is not None else None,
            keys=[self.key] if self.key is not None else None,
        )

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        result = self.energy_model(self._batch(self.atoms))
        if result.failures or not torch.isfinite(result.energy).all():
            reason = result.failures[0][1] if result.failures else "non-finite energy"
            raise CalculationFailed(f"{self.energy_model.name}: {reason}")
        self.results = _results(float(result.energy[0]), result.forces.double().cpu().numpy())

    def store(self, atoms: Atoms, energy: float, forces: np.ndarray) -> None:
        """Set results computed elsewhere (e.g. in a batch) for exactly this geometry."""
        self.atoms = atoms.copy()
        self.results = _results(energy, forces)


def _results(energy: float, forces: np.ndarray) -> dict:
    return {"energy": float(energy), "free_energy": float(energy), "forces": np.array(forces, dtype=np.float64)}
