"""RDKit MMFF94 energies and forces for molecules given as RDKit Mols (explicit hydrogens)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np
from ase import units

from energies._jobs import element_symbols, outcomes_to_result
from energies._pool import Outcome
from energies.base import EnergyBatch, EnergyModel, EnergyResult, UnsupportedMoleculeError

KCAL_PER_MOL_EV = units.kcal / units.mol  # 1 kcal/mol in eV

# Elements with MMFF94 atom types: organic H C N O F Si P S Cl Br I and the ions
# Li+ Na+ K+ Mg2+ Ca2+ Fe2+/3+ Cu+/2+ Zn2+.
MMFF_ELEMENTS = frozenset({1, 3, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 19, 20, 26, 29, 30, 35, 53})


def topology_key(mol) -> tuple:
    """Exact ordered identity of a molecule's graph (elements, charges, bonds), for caching."""
    atoms = tuple((a.GetAtomicNum(), a.GetFormalCharge(), a.GetIsAromatic()) for a in mol.GetAtoms())
    bonds = tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx(), str(b.GetBondType())) for b in mol.GetBonds()))
    return atoms, bonds


class MMFFEnergy(EnergyModel):
    """MMFF94 (or MMFF94s) through RDKit: Å in, eV and eV/Å out; reads ``EnergyBatch.mols``.

    Each molecule's mol must have explicit hydrogens in the same atom order as its positions.
    Force fields are built once per molecular graph (LRU cache of ``cache_size``) and then
    evaluated at new coordinates. Non-bonded terms between disconnected fragments are kept.
    mols: optional molecules to validate at construction (raises UnsupportedMoleculeError).
    """

    name = "mmff"
    supported_elements = MMFF_ELEMENTS
    supported_charges = None  # any, as long as it equals the mol's summed formal charges
    needs_mols = True

    def __init__(self, variant: str = "MMFF94", mols: Optional[Sequence] = None, cache_size: int = 256):
        if variant not in ("MMFF94", "MMFF94s"):
            raise ValueError(f"unknown MMFF variant {variant!r}; choose MMFF94 or MMFF94s")
        self.variant = variant
        self.cache_size = int(cache_size)
        self._cache: "OrderedDict[tuple, tuple]" = OrderedDict()
        for i, mol in enumerate(mols or []):
            numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
            self.check_supported(numbers, charge=_formal_charge(mol), name=_mol_name(mol, i), mol=mol)

    def check_supported(
        self, numbers: Sequence[int], charge: int = 0, spin: int = 1, name: str = "molecule", mol=None
    ) -> None:
        """Elements MMFF94 types; closed shell only; with ``mol``: parameters for every term."""
        self._check_cheap(numbers, charge, spin, name, mol)
        if mol is not None:
            self._check_parameters(numbers, name, mol)

    def _check_cheap(self, numbers, charge, spin, name, mol) -> None:
        super().check_supported(numbers, charge, spin, name, mol)
        if int(spin) != 1:
            raise UnsupportedMoleculeError(f"{name}: MMFF94 handles closed-shell molecules only (spin multiplicity {int(spin)})")
        if mol is None:
            return
        if mol.GetNumAtoms() != len(numbers):
            raise UnsupportedMoleculeError(f"{name}: mol has {mol.GetNumAtoms()} atoms but {len(numbers)} positions (explicit H needed)")
        if [a.GetAtomicNum() for a in mol.GetAtoms()] != [int(z) for z in numbers]:
            raise UnsupportedMoleculeError(f"{name}: mol atom order differs from the atomic numbers given")
        if _formal_charge(mol) != int(charge):
            raise UnsupportedMoleculeError(f"{name}: total charge {int(charge):+d} differs from the mol's formal charge {_formal_charge(mol):+d}")

    def _check_parameters(self, numbers, name, mol) -> None:
        from rdkit.Chem import rdForceFieldHelpers

        if not rdForceFieldHelpers.MMFFHasAllMoleculeParams(mol):
            elements = element_symbols(sorted({int(z) for z in numbers}))
            raise UnsupportedMoleculeError(f"{name}: MMFF94 has no parameters for some atoms/terms of this molecule (elements {elements})")

    def _force_field(self, mol, positions: np.ndarray, numbers: np.ndarray, name: str):
        """Cached (mol copy, force field) for this molecular graph; raises if unparametrised."""
        from rdkit import Chem
        from rdkit.Chem import rdForceFieldHelpers

        key = (self.variant, topology_key(mol))
        entry = self._cache.pop(key, None)
        if entry is None:
            self._check_parameters(numbers, name, mol)
            work = Chem.Mol(mol)
            work.RemoveAllConformers()
            conf = Chem.Conformer(work.GetNumAtoms())
            for i, p in enumerate(positions):
                conf.SetAtomPosition(i, p.tolist())
            work.AddConformer(conf, assignId=True)
            props = rdForceFieldHelpers.MMFFGetMoleculeProperties(work, mmffVariant=self.variant)
            if props is None:
                raise UnsupportedMoleculeError("MMFF94 has no parameters for this molecule")
            # Large threshold: the non-bonded pair list is fixed when the force field is built.
            ff = rdForceFieldHelpers.MMFFGetMoleculeForceField(
                work, props, nonBondedThresh=1.0e4, ignoreInterfragInteractions=False
            )
            if ff is None:
                raise UnsupportedMoleculeError("RDKit could not build an MMFF force field")
            entry = (work, ff)  # keep the mol alive: the force field points into its conformer
        self._cache[key] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry[1]

    def _one(self, index: int, mol, numbers: np.ndarray, positions: np.ndarray, charge: int, spin: int) -> Outcome:
        try:
            if mol is None:
                raise ValueError("no RDKit mol given for this molecule")
            name = f"molecule {index}"
            self._check_cheap(numbers, charge, spin, name, mol)
            if not np.isfinite(positions).all():
                raise ValueError("non-finite positions")
            ff = self._force_field(mol, positions, numbers, name)
            flat = positions.ravel().tolist()
            energy = ff.CalcEnergy(flat) * KCAL_PER_MOL_EV
            forces = -np.asarray(ff.CalcGrad(flat), dtype=np.float64).reshape(-1, 3) * KCAL_PER_MOL_EV
        except Exception as exc:  # noqa: BLE001 - one bad molecule must not fail the batch
            return Outcome(index, float("nan"), None, f"{type(exc).__name__}: {exc}")
        if not np.isfinite(energy) or not np.isfinite(forces).all():
            return Outcome(index, float("nan"), None, "non-finite energy or forces")
        return Outcome(index, float(energy), forces, None)

    def evaluate(self, batch: EnergyBatch) -> EnergyResult:
        """Energies [B] (eV) and forces [N, 3] (eV/Å); failed molecules are NaN plus a reason."""
        if batch.mols is None or len(batch.mols) != batch.num_molecules:
            raise ValueError("MMFFEnergy needs EnergyBatch.mols: one RDKit mol (explicit H) per molecule")
        numbers = batch.numbers.detach().cpu().numpy()
        positions = batch.positions.detach().cpu().double().numpy()
        charges = batch.charges.tolist()
        spins = batch.spins_or_singlet().tolist()
        outcomes = [
            self._one(i, batch.mols[i], numbers[sl], positions[sl], int(charges[i]), int(spins[i]))
            for i, sl in enumerate(batch.molecule_slices())
        ]
        return outcomes_to_result(batch, outcomes)

    def close(self) -> None:
        self._cache.clear()


def _formal_charge(mol) -> int:
    return int(sum(a.GetFormalCharge() for a in mol.GetAtoms()))


def _mol_name(mol, index: int) -> str:
    if mol.HasProp("_Name") and mol.GetProp("_Name"):
        return mol.GetProp("_Name")
    from rdkit import Chem

    return Chem.MolToSmiles(Chem.RemoveHs(mol)) if mol.GetNumAtoms() else f"molecule {index}"
