"""The vectorised symmetry-aware RMSD matrix agrees with RDKit GetBestRMS."""
import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolAlign

from benchmark.rmsd import RMSDInputError, heavy_atom_automorphisms, rmsd_matrix


def _heavy_conformers(smiles, n, seed):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    cids = list(AllChem.EmbedMultipleConfs(mol, n, randomSeed=seed))
    heavy = Chem.RemoveHs(mol)
    return mol, heavy, cids, np.array([heavy.GetConformer(c).GetPositions() for c in cids])


@pytest.mark.parametrize("smiles", [
    "CC(C)(C)c1ccc(CC(=O)[O-])cc1",        # tert-butyl, para-phenylene, carboxylate
    "O=[N+]([O-])c1ccc(C(F)(F)F)cc1",      # nitro + CF3
    "CC(C)(C)OCC(C#N)COC(C)(C)C",          # two tert-butyls: 72 automorphisms
    "OC(=O)c1ccccc1",                      # acid: symmetrised like GetBestRMS does
])
def test_matches_getbestrms(smiles):
    mol, heavy, cids, x = _heavy_conformers(smiles, 9, seed=11)
    autos = heavy_atom_automorphisms(mol)
    assert len(autos) > 1
    d = rmsd_matrix(x[:4], x[4:], autos)
    for i in range(4):
        for j in range(4, len(cids)):
            ref = rdMolAlign.GetBestRMS(Chem.Mol(heavy), Chem.Mol(heavy), prbId=cids[j], refId=cids[i])
            assert d[i, j - 4] == pytest.approx(ref, abs=1e-4)


def test_symmetry_lowers_rmsd_and_rigid_motion_invariance():
    mol, heavy, cids, x = _heavy_conformers("CC(C)(C)c1ccccc1", 2, seed=3)
    autos = heavy_atom_automorphisms(mol)
    # Relabel the three methyls of one copy: the no-symmetry RMSD rises, the symmetric one does not.
    perm = autos[[not np.array_equal(p, np.arange(len(p))) for p in autos].index(True)]
    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    rot *= np.sign(np.linalg.det(rot))
    moved = x[1][perm] @ rot.T + 5.0
    plain = rmsd_matrix(x[:1], moved[None])[0, 0]
    sym = rmsd_matrix(x[:1], moved[None], autos)[0, 0]
    direct = rmsd_matrix(x[:1], x[1:2], autos)[0, 0]
    assert sym == pytest.approx(direct, abs=1e-6)
    assert plain > sym + 0.1
    assert rmsd_matrix(x[:1], x[:1] @ rot.T - 2.0, autos)[0, 0] == pytest.approx(0.0, abs=1e-5)


def test_nan_samples_give_nan_columns_and_chunking_is_invisible():
    mol, heavy, cids, x = _heavy_conformers("CCOC(=O)c1ccccc1C(C)C", 8, seed=5)
    autos = heavy_atom_automorphisms(mol)
    smp = x.copy()
    smp[2, 0, 0] = np.nan
    full = rmsd_matrix(x[:3], smp, autos)
    small = rmsd_matrix(x[:3], smp, autos, max_pairs_per_chunk=5)
    assert np.isnan(full[:, 2]).all() and np.isfinite(np.delete(full, 2, axis=1)).all()
    np.testing.assert_allclose(full, small, atol=1e-9)


def test_shape_errors():
    with pytest.raises(RMSDInputError):
        rmsd_matrix(np.zeros((2, 4, 3)), np.zeros((2, 5, 3)))
    with pytest.raises(RMSDInputError):
        rmsd_matrix(np.zeros((2, 4, 3)), np.zeros((2, 4, 3)), np.zeros((2, 3), dtype=int))
