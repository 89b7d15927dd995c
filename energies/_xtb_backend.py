"""GFN-xTB single points through tblite, one molecule at a time (runs inside workers).

Imports tblite lazily and never torch, so worker processes start quickly and the thread
limits set by the worker take effect before tblite's OpenMP runtime loads.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

# CODATA 2018 (the values tblite itself uses).
HARTREE_EV = 27.211386245988
BOHR_ANGSTROM = 0.529177210903


def _quiet(_message: str) -> None:
    """tblite logger that drops all output."""


def _import_calculator(threads: int):
    """Import tblite with its OpenMP runtime limited to ``threads``.

    tblite links the system libgomp, which reads OMP_NUM_THREADS once, when it is loaded.
    In a process that already runs torch (with its own libgomp), two spinning OpenMP
    runtimes on few cores slow tblite down by up to 100x, so the limit matters in-process too.
    """
    import os
    import sys

    if "tblite.interface" in sys.modules:
        return sys.modules["tblite.interface"].Calculator
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(int(threads))
    try:
        from tblite.interface import Calculator
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return Calculator


class _OpenMPLimit:
    """Run a block with the process's libgomp limited to ``threads`` (restored afterwards).

    When torch is loaded first, tblite binds to torch's libgomp (same soname), whose thread
    count was fixed before we could set OMP_NUM_THREADS; omp_set_num_threads still works.
    """

    def __init__(self, threads: int):
        self.threads = int(threads)
        self._lib = None
        self._saved = None
        try:
            import ctypes

            self._lib = ctypes.CDLL("libgomp.so.1")
        except OSError:  # other OpenMP runtimes / platforms: rely on OMP_NUM_THREADS
            self._lib = None

    def __enter__(self):
        if self._lib is not None:
            self._saved = self._lib.omp_get_max_threads()
            if self._saved != self.threads:
                self._lib.omp_set_num_threads(self.threads)
        return self

    def __exit__(self, *exc):
        if self._lib is not None and self._saved != self.threads:
            self._lib.omp_set_num_threads(self._saved)


class XTBBackend:
    """Keeps one tblite Calculator per molecule (LRU) and only updates its positions.

    compute() takes positions in Å and returns (energy eV, forces eV/Å); tblite raises
    TBLiteRuntimeError for SCF non-convergence and impossible geometries.
    """

    def __init__(
        self,
        method: str = "GFN2-xTB",
        accuracy: float = 1.0,
        max_iter: int = 250,
        electronic_temperature: float = 300.0,
        reuse_wavefunction: bool = False,
        cache_size: int = 64,
        threads: int = 1,
    ):
        self._calculator_cls = _import_calculator(threads)
        self._omp = _OpenMPLimit(threads)
        self.method = method
        self.accuracy = float(accuracy)
        self.max_iter = int(max_iter)
        # tblite wants the electronic temperature in Hartree (k_B in Hartree/K).
        self.temperature_ha = float(electronic_temperature) * 3.166808578545117e-6
        self.reuse_wavefunction = bool(reuse_wavefunction)
        self.cache_size = int(cache_size)
        self._cache: "OrderedDict[tuple, list]" = OrderedDict()

    def _new_calculator(self, numbers, positions_bohr, charge, spin):
        calc = self._calculator_cls(
            self.method,
            numbers,
            positions_bohr,
            charge=float(charge),
            uhf=int(spin) - 1,
            color=False,
            logger=_quiet,
        )
        calc.set("verbosity", 0)
        calc.set("accuracy", self.accuracy)
        calc.set("max-iter", self.max_iter)
        calc.set("temperature", self.temperature_ha)
        return calc

    def compute(self, key, numbers, positions, charge, spin):
        with self._omp:
            return self._compute(key, numbers, positions, charge, spin)

    def _compute(self, key, numbers, positions, charge, spin):
        numbers = np.ascontiguousarray(numbers, dtype=np.int32)
        positions_bohr = np.ascontiguousarray(positions, dtype=np.float64) / BOHR_ANGSTROM
        cache_key = (key, numbers.tobytes(), int(charge), int(spin))
        # Popped and re-inserted only on success: a failed SCF can leave the calculator or
        # its wavefunction in a bad state, so an exception below drops it from the cache.
        entry = self._cache.pop(cache_key, None)
        if entry is None:
            entry = [self._new_calculator(numbers, positions_bohr, charge, spin), None]
        else:
            entry[0].update(positions_bohr)
        restart = entry[1] if self.reuse_wavefunction else None
        result = entry[0].singlepoint(restart, copy=True)
        entry[1] = result
        self._cache[cache_key] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        energy = float(result.get("energy")) * HARTREE_EV
        forces = -np.asarray(result.get("gradient"), dtype=np.float64) * (HARTREE_EV / BOHR_ANGSTROM)
        return energy, forces
