"""Typed options for selecting and configuring an energy model (see energies.registry)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class EnergyConfig:
    """Which energy to use and how to run it.

    name: registry name: "xtb" (GFN2-xTB via tblite), "mmff" (RDKit MMFF94),
          "fairchem" (UMA/eSEN checkpoint), "ase:<module.Class>" (any ASE calculator), ...
    workers: parallel worker processes (one thread each) for CPU energies.
    checkpoint: local path of model weights (fairchem).
    task: fairchem task head, e.g. "omol".
    device: "cpu" or "cuda" for GPU-capable energies.
    timeout_s: per-molecule wall-clock limit in worker processes; exceeded -> non-finite.
    options: extra keyword arguments passed to the energy's constructor.
    """

    name: str = "xtb"
    workers: int = 2
    checkpoint: Optional[str] = None
    task: str = "omol"
    device: str = "cpu"
    timeout_s: float = 120.0
    options: dict = field(default_factory=dict)
