"""Put conformers into the SMILES atom order and check them against the SMILES.

SMILES atom order convention of the project: ``Chem.AddHs(Chem.MolFromSmiles(smiles))`` (heavy
atoms first, in SMILES order, then hydrogens). Connectivity is perceived from coordinates with
RDKit's rdDetermineBonds.DetermineConnectivity; a conformer in any atom order is mapped onto the
SMILES graph by an element-aware graph isomorphism (substructure match of bond-order-free
skeletons, equal atom and bond counts). Connectivity and stereo checks are those of
adjoint_sampling.chemistry (the same functions as the sampler's SDF/XYZ flags): stereo is checked
on the stereo elements the SMILES specifies, via AssignStereochemistryFrom3D and the new CIP
labeler (rdCIPLabeler).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from rdkit import Chem

from adjoint_sampling.chemistry import bond_set, connectivity_matches, perceive_bonds, reference_stereo, stereo_matches


class InvalidSmilesError(ValueError):
    """RDKit cannot parse the SMILES."""


def _skeleton(numbers, bonds) -> Chem.Mol:
    """A graph of bare elements and single bonds, for element-aware isomorphism."""
    rw = Chem.RWMol()
    for z in numbers:
        atom = Chem.Atom(int(z))
        atom.SetNoImplicit(True)
        rw.AddAtom(atom)
    for i, j in bonds:
        rw.AddBond(int(i), int(j), Chem.BondType.SINGLE)
    mol = rw.GetMol()
    mol.UpdatePropertyCache(strict=False)
    return mol


@dataclass
class MoleculeTemplate:
    """Everything about one SMILES needed to map and check its conformers."""

    smiles: str
    mol: Chem.Mol  # AddHs(MolFromSmiles(smiles))
    numbers: np.ndarray
    charge: int
    bonds: frozenset
    skeleton: Chem.Mol
    heavy: np.ndarray  # indices of heavy atoms (0..n_heavy-1)
    stereo_want: dict  # chemistry.reference_stereo(mol): CIP labels of the SMILES-specified stereo elements

    @staticmethod
    def from_smiles(smiles: str) -> "MoleculeTemplate":
        base = Chem.MolFromSmiles(smiles)
        if base is None:
            raise InvalidSmilesError(f"RDKit cannot parse SMILES {smiles!r}")
        mol = Chem.AddHs(base)
        numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
        bonds = bond_set(mol)
        return MoleculeTemplate(smiles, mol, numbers, Chem.GetFormalCharge(mol), bonds, _skeleton(numbers, bonds),
                                np.flatnonzero(numbers > 1), reference_stereo(mol))

    @property
    def num_atoms(self) -> int:
        return len(self.numbers)

    def map_conformer(self, numbers: np.ndarray, coords: np.ndarray) -> tuple[Optional[np.ndarray], str]:
        """Coordinates [N, 3] (Å) reordered to the SMILES order, or (None, reason) when they do not fit."""
        numbers = np.asarray(numbers)
        if len(numbers) != self.num_atoms:
            return None, f"{len(numbers)} atoms, SMILES has {self.num_atoms}"
        if not np.isfinite(coords).all():
            return None, "non-finite coordinates"
        if sorted(numbers.tolist()) != sorted(self.numbers.tolist()):
            return None, "different elements"
        bonds = perceive_bonds(numbers, coords, self.charge)
        if bonds is None:
            return None, "bond perception failed"
        if np.array_equal(numbers, self.numbers) and bonds == self.bonds:
            return np.asarray(coords, dtype=np.float64), ""
        if len(bonds) != len(self.bonds):
            return None, f"connectivity differs ({len(bonds)} perceived bonds, SMILES has {len(self.bonds)})"
        match = _skeleton(numbers, bonds).GetSubstructMatch(self.skeleton)
        if not match:
            return None, "connectivity differs from the SMILES graph"
        return np.asarray(coords, dtype=np.float64)[list(match)], ""

    def connectivity_ok(self, coords: np.ndarray) -> bool:
        """Coordinates already in SMILES order: do the perceived bonds equal the SMILES bonds?"""
        return connectivity_matches(self.mol, coords)

    def stereo_ok(self, coords: np.ndarray) -> bool:
        """Do the stereocentres / double bonds specified by the SMILES keep their CIP labels in 3D?"""
        return stereo_matches(self.mol, coords, self.stereo_want)


def check_conformers(template: MoleculeTemplate, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per conformer [n, N, 3] in SMILES order: (connectivity ok, stereo ok) boolean arrays.

    Non-finite (failed) conformers are False in both; stereo is only checked where connectivity holds.
    """
    conn = np.zeros(len(coords), dtype=bool)
    stereo = np.zeros(len(coords), dtype=bool)
    for k, x in enumerate(coords):
        conn[k] = template.connectivity_ok(x)
        stereo[k] = conn[k] and template.stereo_ok(x)
    return conn, stereo
