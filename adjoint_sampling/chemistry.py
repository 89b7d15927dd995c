"""Connectivity and stereo of a conformer checked against its SMILES: one implementation for all.

The sampler's SDF/XYZ flags (adjoint_sampling.sampling) and the benchmark's wrong-connectivity /
wrong-stereo counts (benchmark.mapping) both call these functions, so they are one measurement.
Only RDKit and NumPy are needed here.

Atom order: ``mol`` is the SMILES molecule with explicit hydrogens (``Chem.AddHs(Chem.MolFromSmiles(s))``)
and ``coords`` [N, 3] (Å) are in that order.

Connectivity: bonds perceived from the coordinates (rdDetermineBonds.DetermineConnectivity,
covalent radii, no Hückel) must equal the SMILES bonds; bond orders are not compared.

Stereo: the stereo elements the SMILES specifies (tetrahedral centres with a chiral tag, double
bonds with a stereo flag) are labelled with the new CIP labeler (rdCIPLabeler: R/S, r/s for
pseudo-asymmetric centres, E/Z), on the SMILES and on the conformer after
AssignStereochemistryFrom3D; every element the SMILES gives a CIP label must keep it. An element
the labeler leaves without a label in the SMILES (no CIP descriptor exists) is not checked.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdCIPLabeler, rdDetermineBonds
from rdkit.Geometry import Point3D

StereoKey = tuple  # ("atom", index) or ("bond", index)


def conformer_mol(mol: Chem.Mol, coords: np.ndarray) -> Chem.Mol:
    """A copy of ``mol`` (SMILES bonds) with ``coords`` (Å) as its only, 3-D conformer."""
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, p in enumerate(coords):
        conf.SetAtomPosition(i, Point3D(*map(float, p)))
    conf.Set3D(True)
    out.AddConformer(conf, assignId=True)
    return out


def bond_set(mol: Chem.Mol) -> frozenset:
    """The bonds of ``mol`` as (i, j) pairs with i < j."""
    return frozenset((min(b.GetBeginAtomIdx(), b.GetEndAtomIdx()), max(b.GetBeginAtomIdx(), b.GetEndAtomIdx()))
                     for b in mol.GetBonds())


def perceive_bonds(numbers: np.ndarray, coords: np.ndarray, charge: int = 0) -> Optional[frozenset]:
    """Bonds (i < j) perceived from coordinates (Å); None for non-finite coordinates or a failed perception."""
    coords = np.asarray(coords, dtype=np.float64)
    if not np.isfinite(coords).all():
        return None
    rw = Chem.RWMol()
    for z in numbers:
        rw.AddAtom(Chem.Atom(int(z)))
    mol = conformer_mol(rw.GetMol(), coords)
    try:
        rdDetermineBonds.DetermineConnectivity(mol, useHueckel=False, charge=int(charge))
    except Exception:  # RDKit raises ValueError / RuntimeError and its own types
        return None
    return bond_set(mol)


def connectivity_matches(mol: Chem.Mol, coords: np.ndarray) -> bool:
    """True if bonds perceived from the coordinates equal the SMILES bonds (same atom order)."""
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    return perceive_bonds(numbers, coords, Chem.GetFormalCharge(mol)) == bond_set(mol)


def specified_stereo(mol: Chem.Mol) -> list[StereoKey]:
    """The stereo elements the SMILES specifies: tetrahedral centres with a chiral tag, bonds with a stereo flag."""
    atoms = [("atom", a.GetIdx()) for a in mol.GetAtoms()
             if a.GetChiralTag() in (Chem.ChiralType.CHI_TETRAHEDRAL_CW, Chem.ChiralType.CHI_TETRAHEDRAL_CCW)]
    bonds = [("bond", b.GetIdx()) for b in mol.GetBonds()
             if b.GetStereo() not in (Chem.BondStereo.STEREONONE, Chem.BondStereo.STEREOANY)]
    return atoms + bonds


def stereo_labels(mol: Chem.Mol, keys: Iterable[StereoKey]) -> dict:
    """CIP labels (rdCIPLabeler) of the given elements; an element the labeler gives no label is left out.

    Labels are computed on a copy whose old ``_CIPCode`` properties (e.g. from the legacy
    AssignStereochemistry) are cleared first, so every label comes from the new labeler. The whole
    molecule is labelled (no atomsToLabel / bondsToLabel): before RDKit 2026.09 labelling a subset
    ignored the other stereo elements a label may depend on.
    """
    keys = list(keys)
    if not keys:
        return {}
    mol = Chem.Mol(mol)
    for a in mol.GetAtoms():
        a.ClearProp("_CIPCode")
    for b in mol.GetBonds():
        b.ClearProp("_CIPCode")
    rdCIPLabeler.AssignCIPLabels(mol)
    labels = {}
    for kind, i in keys:
        item = mol.GetAtomWithIdx(i) if kind == "atom" else mol.GetBondWithIdx(i)
        if item.HasProp("_CIPCode"):
            labels[(kind, i)] = item.GetProp("_CIPCode")
    return labels


def reference_stereo(mol: Chem.Mol) -> dict:
    """The CIP labels of the SMILES-specified stereo elements of ``mol``: what every conformer must keep."""
    return stereo_labels(mol, specified_stereo(mol))


def stereo_matches(mol: Chem.Mol, coords: np.ndarray, want: Optional[dict] = None) -> bool:
    """True if every stereocentre / double bond specified in the SMILES has the same CIP label in 3D.

    ``want``: ``reference_stereo(mol)``, when the caller keeps it for many conformers.
    """
    if want is None:
        want = reference_stereo(mol)
    if not want:
        return True
    if not np.isfinite(np.asarray(coords, dtype=np.float64)).all():
        return False
    probe = conformer_mol(mol, coords)
    Chem.AssignStereochemistryFrom3D(probe)
    return stereo_labels(probe, want) == want
