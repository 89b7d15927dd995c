"""Connectivity and stereo flags written beside every sampled conformer."""
import numpy as np
from rdkit.Chem import AllChem

from adjoint_sampling.graphs import mol_from_smiles
from adjoint_sampling.sampling import connectivity_matches, stereo_matches


def _embedded(smiles):
    mol = mol_from_smiles(smiles)
    AllChem.EmbedMolecule(mol, randomSeed=7)
    return mol, mol.GetConformer().GetPositions()


def test_good_conformer_passes_both_checks():
    mol, x = _embedded("C[C@H](N)C(=O)O")  # L-alanine
    assert connectivity_matches(mol, x) and stereo_matches(mol, x)


def test_mirror_image_flips_the_stereocentre_only():
    mol, x = _embedded("C[C@H](N)C(=O)O")
    mirrored = x * np.array([-1.0, 1.0, 1.0])
    assert connectivity_matches(mol, mirrored)
    assert not stereo_matches(mol, mirrored)


def test_double_bond_geometry_is_checked():
    mol, x = _embedded("C/C=C/C")  # E-2-butene
    assert stereo_matches(mol, x)
    z = mol_from_smiles("C/C=C\\C")
    assert not stereo_matches(z, x)  # same atom order, coordinates of the other isomer


def test_broken_bond_is_flagged():
    mol, x = _embedded("CCO")
    far = x.copy()
    far[2] += np.array([5.0, 0.0, 0.0])  # pull the oxygen away
    assert not connectivity_matches(mol, far)
    squashed = 0.3 * x  # everything bonded to everything
    assert not connectivity_matches(mol, squashed)
