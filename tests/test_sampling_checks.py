"""Connectivity and stereo flags written beside every sampled conformer, and their agreement with the benchmark."""
import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

from adjoint_sampling.graphs import mol_from_smiles
from adjoint_sampling.sampling import ConformerRecord, connectivity_matches, stereo_matches, write_conformers
from benchmark.mapping import MoleculeTemplate, check_conformers


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


def test_sdf_flag_and_benchmark_stereo_ok_are_one_measurement(tmp_path):
    """The stereo_ok flag the sampler writes and the benchmark template's stereo_ok agree conformer by conformer.

    The molecule has a stereocentre (C2), a stereo double bond (E) and a cis-1,4-disubstituted ring whose
    carbons are pseudo-asymmetric (r/s). The wrong-ring conformer is the one a legacy-CIP check
    (AssignStereochemistry's _CIPCode, which gives those carbons no label) passes: if either side
    used that method the flags would part there.
    """
    smiles = "C[C@@H](O)/C=C/[C@H]1CC[C@@H](C)CC1"
    same_atom_order = {  # only the stereo marks differ, so every variant has the atom order of `smiles`
        "right": smiles,
        "z_bond": "C[C@@H](O)/C=C\\[C@H]1CC[C@@H](C)CC1",
        "trans_ring": "C[C@@H](O)/C=C/[C@H]1CC[C@H](C)CC1",
    }
    coords = {name: _embedded(s)[1] for name, s in same_atom_order.items()}
    coords["mirror"] = coords["right"] * np.array([-1.0, 1.0, 1.0])  # flips C2 only
    expected = {"right": True, "z_bond": False, "trans_ring": False, "mirror": False}
    names = list(expected)

    mol = mol_from_smiles(smiles)
    path = tmp_path / "c.sdf"
    write_conformers([ConformerRecord(n, smiles, mol, coords[n]) for n in names], path)
    written = Chem.SDMolSupplier(str(path), removeHs=False)
    sdf_flag = {n: m.GetProp("stereo_ok") == "1" for n, m in zip(names, written)}
    assert all(m.GetProp("connectivity_ok") == "1" for m in Chem.SDMolSupplier(str(path), removeHs=False))

    tpl = MoleculeTemplate.from_smiles(smiles)
    bench = {n: bool(tpl.stereo_ok(coords[n])) for n in names}
    conn, counted = check_conformers(tpl, np.stack([coords[n] for n in names]))
    assert conn.all()
    assert sdf_flag == bench, "the SDF flag and the benchmark's stereo_ok measure different things"
    assert dict(zip(names, counted.tolist())) == bench
    assert bench == expected
