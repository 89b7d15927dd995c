"""Energy models behind one contract (Å in, eV and eV/Å out). See energies.base.

Names are resolved lazily (PEP 562) so that worker processes importing
``energies._pool`` or ``energies._xtb_backend`` do not pay for importing torch.
"""
from __future__ import annotations

import importlib

__all__ = ["EnergyBatch", "EnergyModel", "EnergyResult", "UnsupportedMoleculeError", "EnergyConfig", "make_energy"]

_LAZY = {
    "EnergyBatch": "energies.base",
    "EnergyModel": "energies.base",
    "EnergyResult": "energies.base",
    "UnsupportedMoleculeError": "energies.base",
    "EnergyConfig": "energies.config",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'energies' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


def make_energy(cfg):
    """Build the energy model named by ``cfg.name`` (see energies.registry)."""
    from energies.registry import make_energy as _make

    return _make(cfg)
