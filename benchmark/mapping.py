"""Put conformers into the SMILES atom order and check them against the SMILES.

SMILES atom order convention of the project: ``Chem.AddHs(Chem.MolFromSmiles(smiles))`` (heavy
atoms first, in SMILES order, then hydrogens). Connectivity is perceived from coordinates with
RDKit's rdDetermineBonds.DetermineConnectivity; a conformer in any atom order is mapped onto the
SMILES graph by an element-aware graph isomorphism (substructure match of bond-order-free
skeletons, equal atom and bond counts). Stereo is checked on the stereo elements the SMILES
specifies, via AssignStereochemistryFrom3D and CIP labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdDetermineBonds
from rdkit.Geometry import Point3D


class InvalidSmilesError(ValueError):
    """RDKit cannot parse the SMILES."""


def _bond_set(mol: Chem.Mol) -> frozenset:
    return frozenset((min(b.GetBeginAtomIdx(), b.GetEndAtomIdx()), max(b.GetBeginAtomIdx(), b.GetEndAtomIdx()))
                     for b in mol.GetBonds())


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


def _with_coords(mol: Chem.Mol, coords: np.ndarray) -> Chem.Mol:
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, p in enumerate(coords):
        conf.SetAtomPosition(i, Point3D(float(p[0]), float(p[1]), float(p[2])))
    conf.Set3D(True)
    out.AddConformer(conf, assignId=True)
    return out


def perceive_bonds(numbers: np.ndarray, coords: np.ndarray, charge: int = 0) -> Optional[frozenset]:
    """Bonds (i < j) perceived from coordinates (Å); None if perception fails."""
    rw = Chem.RWMol()
    for z in numbers:
        rw.AddAtom(Chem.Atom(int(z)))
    mol = _with_coords(rw.GetMol(), coords)
    try:
        rdDetermineBonds.DetermineConnectivity(mol, useHueckel=False, charge=int(charge))
    except (ValueError, RuntimeError):
        return None
    return _bond_set(mol)


def _stereo_labels(mol: Chem.Mol, atoms: list[int], bonds: list[int]) -> dict:
    labels = {}
    for a in atoms:
        at = mol.GetAtomWithIdx(a)
        labels[("atom", a)] = at.GetProp("_CIPCode") if at.HasProp("_CIPCode") else "?"
    for b in bonds:
        st = mol.GetBondWithIdx(b).GetStereo()
        labels[("bond", b)] = {Chem.BondStereo.STEREOE: "E", Chem.BondStereo.STEREOTRANS: "E",
                               Chem.BondStereo.STEREOZ: "Z", Chem.BondStereo.STEREOCIS: "Z"}.get(st, "?")
    return labels


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
    stereo_atoms: list
    stereo_bonds: list
    stereo_want: dict

    @staticmethod
    def from_smiles(smiles: str) -> "MoleculeTemplate":
        base = Chem.MolFromSmiles(smiles)
        if base is None:
            raise InvalidSmilesError(f"RDKit cannot parse SMILES {smiles!r}")
        mol = Chem.AddHs(base)
        numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
        bonds = _bond_set(mol)
        Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
        stereo_atoms = [a.GetIdx() for a in mol.GetAtoms()
                        if a.GetChiralTag() in (Chem.ChiralType.CHI_TETRAHEDRAL_CW, Chem.ChiralType.CHI_TETRAHEDRAL_CCW)]
        stereo_bonds = [b.GetIdx() for b in mol.GetBonds() if b.GetStereo() not in
                        (Chem.BondStereo.STEREONONE, Chem.BondStereo.STEREOANY)]
        return MoleculeTemplate(smiles, mol, numbers, Chem.GetFormalCharge(mol), bonds, _skeleton(numbers, bonds),
                                np.flatnonzero(numbers > 1), stereo_atoms, stereo_bonds,
                                _stereo_labels(mol, stereo_atoms, stereo_bonds))

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
        if not np.isfinite(coords).all():
            return False
        return perceive_bonds(self.numbers, coords, self.charge) == self.bonds

    def stereo_ok(self, coords: np.ndarray) -> bool:
        """Do the stereocentres / double bonds specified by the SMILES keep their CIP labels in 3D?"""
        if not self.stereo_want:
            return True
        probe = _with_coords(self.mol, coords)
        Chem.AssignStereochemistryFrom3D(probe)
        return _stereo_labels(probe, self.stereo_atoms, self.stereo_bonds) == self.stereo_want


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
