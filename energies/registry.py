"""Select an energy model by name: ``make_energy(EnergyConfig(name=...))``.

Built in: ``xtb``, ``mmff``, ``fairchem`` and ``ase:<module.Class>`` (any ASE calculator
class; ``EnergyConfig.options`` are its constructor keyword arguments). Others add their
own with ``register(name, factory, ...)`` where ``factory(cfg: EnergyConfig) -> EnergyModel``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

from energies.base import EnergyModel
from energies.config import EnergyConfig

ASE_PREFIX = "ase:"


@dataclass
class EnergySpec:
    """A registered energy: how to build it and what it supports (for listings).

    supported_elements: atomic numbers (None = any) or a free-text summary.
    supported_charges: free-text summary of allowed total charges.
    requirements: importable module names the energy needs.
    """

    name: str
    factory: Callable[[EnergyConfig], EnergyModel]
    description: str = ""
    requirements: tuple = ()
    supported_elements: object = None
    supported_charges: str = "any"
    extra: dict = field(default_factory=dict)


_REGISTRY: dict[str, EnergySpec] = {}


def register(
    name: str,
    factory: Callable[[EnergyConfig], EnergyModel],
    description: str = "",
    requirements: Sequence[str] = (),
    supported_elements: object = None,
    supported_charges: str = "any",
    overwrite: bool = False,
) -> None:
    """Make ``make_energy(EnergyConfig(name=name))`` call ``factory(cfg)``.

    ``supported_elements`` may be a set of atomic numbers or a text summary; it is only used
    by ``available_energies()`` (the model itself enforces support in ``check_supported``).
    """
    if not name or name.startswith(ASE_PREFIX):
        raise ValueError(f"invalid energy name {name!r} (empty or reserved prefix {ASE_PREFIX!r})")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"energy {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = EnergySpec(
        name=name,
        factory=factory,
        description=description,
        requirements=tuple(requirements),
        supported_elements=supported_elements,
        supported_charges=supported_charges,
    )


def known_names() -> list[str]:
    return sorted(_REGISTRY) + [f"{ASE_PREFIX}<module.Class>"]


def make_energy(cfg: EnergyConfig) -> EnergyModel:
    """Build the energy model named by ``cfg.name``; unknown names raise ValueError."""
    if cfg.name.startswith(ASE_PREFIX):
        return _make_ase(cfg)
    spec = _REGISTRY.get(cfg.name)
    if spec is None:
        raise ValueError(f"unknown energy {cfg.name!r}; known: {', '.join(known_names())}")
    return spec.factory(cfg)


def _make_ase(cfg: EnergyConfig) -> EnergyModel:
    from energies.ase_calc import ASECalculatorEnergy

    path = cfg.name[len(ASE_PREFIX):]
    if "." not in path:
        raise ValueError(f"energy {cfg.name!r}: expected 'ase:<module.Class>', e.g. 'ase:ase.calculators.emt.EMT'")
    return ASECalculatorEnergy(
        calculator=path, calculator_kwargs=dict(cfg.options), workers=cfg.workers, timeout_s=cfg.timeout_s
    )


def _deps_status(requirements: Sequence[str]) -> tuple[bool, list[str]]:
    """(all importable, names that failed to import)."""
    missing = []
    for module in requirements:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - a broken install counts as missing
            missing.append(module)
    return not missing, missing


def elements_summary(elements: object) -> str:
    """Short text for a set of atomic numbers, e.g. 'H-Rn (Z 1-86)' or 'H, C, N, O'."""
    if elements is None:
        return "any"
    if isinstance(elements, str):
        return elements
    from rdkit.Chem import GetPeriodicTable

    table = GetPeriodicTable()
    zs = sorted(int(z) for z in elements)
    if zs == list(range(zs[0], zs[-1] + 1)) and len(zs) > 3:
        return f"{table.GetElementSymbol(zs[0])}-{table.GetElementSymbol(zs[-1])} (Z {zs[0]}-{zs[-1]})"
    return " ".join(table.GetElementSymbol(z) for z in zs)


def available_energies(check_imports: bool = True) -> list[dict]:
    """One dict per registered energy: name, description, elements, charges, deps_ok, missing."""
    rows = []
    for spec in sorted(_REGISTRY.values(), key=lambda s: s.name):
        ok, missing = _deps_status(spec.requirements) if check_imports else (None, [])
        rows.append(
            {
                "name": spec.name,
                "description": spec.description,
                "elements": elements_summary(spec.supported_elements),
                "charges": spec.supported_charges,
                "deps_ok": ok,
                "missing": missing,
            }
        )
    ok, missing = _deps_status(("ase",)) if check_imports else (None, [])
    rows.append(
        {
            "name": f"{ASE_PREFIX}<module.Class>",
            "description": "any ASE calculator class; energy.options = constructor kwargs",
            "elements": "calculator-dependent",
            "charges": "calculator-dependent (atoms.info['charge'], ['spin'])",
            "deps_ok": ok,
            "missing": missing,
        }
    )
    return rows


# ---- built-in energies -------------------------------------------------------------------

def _make_xtb(cfg: EnergyConfig) -> EnergyModel:
    from energies.xtb import XTBEnergy

    return XTBEnergy(workers=cfg.workers, timeout_s=cfg.timeout_s, **cfg.options)


def _make_mmff(cfg: EnergyConfig) -> EnergyModel:
    from energies.mmff import MMFFEnergy

    return MMFFEnergy(**cfg.options)


def _make_fairchem(cfg: EnergyConfig) -> EnergyModel:
    from energies.fairchem import FairChemEnergy

    return FairChemEnergy(checkpoint=cfg.checkpoint, task=cfg.task, device=cfg.device, **cfg.options)


def _register_builtins() -> None:
    from energies.mmff import MMFF_ELEMENTS

    register(
        "xtb",
        _make_xtb,
        "GFN2-xTB semi-empirical tight binding (tblite), parallel CPU workers",
        requirements=("tblite",),
        supported_elements=frozenset(range(1, 87)),
        supported_charges="any (spin parity checked)",
    )
    register(
        "mmff",
        _make_mmff,
        "RDKit MMFF94 force field (needs the molecular graph)",
        requirements=("rdkit",),
        supported_elements=MMFF_ELEMENTS,
        supported_charges="= formal charge of the mol; singlets only",
    )
    register(
        "fairchem",
        _make_fairchem,
        "fairchem-core UMA/eSEN checkpoint (energy.checkpoint=PATH, energy.task=omol)",
        requirements=("fairchem.core",),
        supported_elements="checkpoint-dependent (OMol25-trained UMA/eSEN: H-Bi)",
        supported_charges="any (total charge and spin are model inputs)",
    )
    from energies.synthetic import register_synthetic  # dw4, lj13 (synthetic benchmarks)

    register_synthetic()


_register_builtins()
