"""GFN2-xTB energies and forces through tblite, evaluated in parallel worker processes."""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np

from energies._jobs import batch_to_jobs, outcomes_to_result
from energies._pool import SerialRunner, WorkerPool
from energies._xtb_backend import XTBBackend
from energies.base import EnergyBatch, EnergyModel, EnergyResult, UnsupportedMoleculeError

XTB_METHODS = ("GFN2-xTB", "GFN1-xTB", "IPEA1-xTB")


class XTBEnergy(EnergyModel):
    """GFN2-xTB (default) single points: Å in, eV and eV/Å out.

    workers: number of spawned single-threaded worker processes; 0 evaluates in this process
        (no timeout or crash isolation there). Conformers with the same ``EnergyBatch.keys``
        entry (or the same elements, charge and spin) go to the same worker where the load
        allows, which reuses its tblite calculator.
    timeout_s: per-molecule wall-clock limit in workers; a molecule that exceeds it fails and
        its worker is restarted.
    accuracy, max_iter, electronic_temperature (K): tblite SCF settings.
    threads: OpenMP threads per molecule evaluation (keep 1 and use workers instead, except
        for very large molecules).
    reuse_wavefunction: start each SCF from the previous wavefunction of the same molecule
        (faster for small moves, but results then depend slightly on evaluation order).
    Failed molecules (SCF not converged, atoms on top of each other, worker crash, timeout)
    get NaN energy/forces and a ``(index, reason)`` entry in ``EnergyResult.failures``.
    """

    name = "xtb"
    supported_elements = frozenset(range(1, 87))  # GFN2-xTB is parametrised for H..Rn
    supported_charges = None  # any integer charge; electron-count parity is checked vs spin

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 120.0,
        method: str = "GFN2-xTB",
        accuracy: float = 1.0,
        max_iter: int = 250,
        electronic_temperature: float = 300.0,
        reuse_wavefunction: bool = False,
        cache_size: int = 64,
        threads: int = 1,
    ):
        if method not in XTB_METHODS:
            raise ValueError(f"unknown xTB method {method!r}; choose one of {', '.join(XTB_METHODS)}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.method = method
        self.workers = int(workers)
        self.timeout_s = float(timeout_s)
        make_backend = functools.partial(
            XTBBackend,
            method=method,
            accuracy=accuracy,
            max_iter=max_iter,
            electronic_temperature=electronic_temperature,
            reuse_wavefunction=reuse_wavefunction,
            cache_size=cache_size,
            threads=threads,
        )
        if self.workers == 0:
            self._runner = SerialRunner(make_backend)
        else:
            self._runner = WorkerPool(make_backend, self.workers, timeout_s=self.timeout_s)

    @property
    def pool(self) -> Optional[WorkerPool]:
        """The worker pool (None when evaluating in-process)."""
        return self._runner if isinstance(self._runner, WorkerPool) else None

    def check_supported(
        self, numbers: Sequence[int], charge: int = 0, spin: int = 1, name: str = "molecule", mol=None
    ) -> None:
        """Elements H..Rn; spin multiplicity must fit the electron count's parity."""
        super().check_supported(numbers, charge, spin, name, mol)
        electrons = int(np.sum(np.asarray(numbers, dtype=np.int64))) - int(charge)
        unpaired = int(spin) - 1
        if electrons < 0 or unpaired < 0 or unpaired > electrons or (electrons - unpaired) % 2:
            raise UnsupportedMoleculeError(
                f"{name}: spin multiplicity {int(spin)} impossible with {electrons} electrons (charge {int(charge):+d})"
            )

    def _precheck(self, numbers: np.ndarray, charge: int, spin: int) -> None:
        self.check_supported(numbers, charge, spin)

    def evaluate(self, batch: EnergyBatch) -> EnergyResult:
        """Energies [B] (eV) and forces [N, 3] (eV/Å); failures are NaN plus a reason."""
        if self._runner is None:
            raise RuntimeError("XTBEnergy was closed")
        jobs, early = batch_to_jobs(batch, precheck=self._precheck)
        outcomes = self._runner.run(jobs, [float(len(j.numbers)) ** 3 for j in jobs])
        return outcomes_to_result(batch, list(early) + list(outcomes))

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def __del__(self):  # pragma: no cover - best effort; pools also close at interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
