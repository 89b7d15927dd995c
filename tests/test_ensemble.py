"""The relaxed ensemble on hand-computed cases: populations, relative energies, validity, dedup,
ordering, energy window, CSV; and the shipped-sampler path (adjoint_sampling.pretrained)."""
import csv
import json
import math

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from adjoint_sampling import ensemble, pretrained
from adjoint_sampling.ensemble import (KCAL_MOL_PER_EV, Member, boltzmann_populations, build_ensemble, deduplicate,
                                       ensemble_csv_path, heavy_atom_rmsd, relative_energies, temperature_k,
                                       valid_conformers, within_window, write_ensemble_csv)

TAU = 0.025852  # eV, kT at 300 K


def test_populations_of_given_energies():
    # ΔE = 0, τ ln 2, τ ln 4: weights 1, 1/2, 1/4, so p = 4/7, 2/7, 1/7 whatever the offset
    e = -1000.0 + np.array([0.0, TAU * math.log(2), TAU * math.log(4)])
    np.testing.assert_allclose(boltzmann_populations(e, TAU), [4 / 7, 2 / 7, 1 / 7], rtol=1e-12)
    np.testing.assert_allclose(relative_energies(e), [0.0, TAU * math.log(2), TAU * math.log(4)], atol=1e-9)
    # two degenerate minima share evenly; a far one gets exp(-1 eV / τ) ≈ 1.6e-17 of the lowest
    np.testing.assert_allclose(boltzmann_populations([-5.0, -5.0, -4.0], TAU)[:2], [0.5, 0.5])
    assert boltzmann_populations([1e6, 1e6 + 1.0], TAU)[1] == pytest.approx(math.exp(-1.0 / TAU), rel=1e-9)
    with pytest.raises(ValueError):
        boltzmann_populations([0.0], 0.0)
    assert temperature_k(TAU) == pytest.approx(300.0, abs=0.01)
    assert Member(1, 0, 0.0, 0.1, 1.0).rel_energy_kcal_mol == pytest.approx(2.3060548, rel=1e-7)


def _isopropanol(seed=7):
    mol = Chem.AddHs(Chem.MolFromSmiles("CC(C)O"))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    return mol, mol.GetConformer().GetPositions()


def _rotated(x):
    c, s = math.cos(1.1), math.sin(1.1)
    return x @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + np.array([3.0, -2.0, 0.5])


def test_heavy_atom_rmsd_is_symmetry_aware_and_hand_computable():
    mol, x = _isopropanol()
    swapped = x.copy()
    swapped[[0, 2]] = x[[2, 0]]  # the two methyl carbons trade places: the same heavy-atom geometry
    assert heavy_atom_rmsd(mol, x, _rotated(x)) < 1e-6
    assert heavy_atom_rmsd(mol, x, swapped) < 1e-6
    # scaling the heavy atoms by s about their centroid: best-fit RMSD is (s - 1) · radius of gyration
    heavy = x[:4]
    centre = heavy.mean(axis=0)
    scaled = x.copy()
    scaled[:4] = centre + 2.0 * (heavy - centre)
    rg = math.sqrt(((heavy - centre) ** 2).sum(axis=1).mean())
    assert heavy_atom_rmsd(mol, x, scaled) == pytest.approx(rg, rel=1e-6)


def _four(mol, x):
    """Conformers: x, x moved rigidly, x with the methyls swapped, x's heavy atoms scaled by 2; and rg."""
    heavy = x[:4]
    centre = heavy.mean(axis=0)
    scaled = x.copy()
    scaled[:4] = centre + 2.0 * (heavy - centre)
    swapped = x.copy()
    swapped[[0, 2]] = x[[2, 0]]
    rg = math.sqrt(((heavy - centre) ** 2).sum(axis=1).mean())
    return np.stack([x, _rotated(x), swapped, scaled]), rg


def test_dedup_keeps_one_of_identical_conformers_and_the_different_one():
    mol, x = _isopropanol()
    coords, rg = _four(mol, x)
    order = [2, 0, 1, 3]  # lowest energy first: the swapped copy is the one kept of the three identical
    assert deduplicate(mol, coords, order, 0.5) == [2, 3]
    assert deduplicate(mol, coords, order, rg * 1.001) == [2]  # the scaled one is rg away: now a duplicate
    assert deduplicate(mol, coords, order, rg * 0.999) == [2, 3]
    assert deduplicate(mol, coords, order, 0.0) == order  # 0 disables dedup


def test_ensemble_order_window_populations():
    mol, x = _isopropanol()
    coords, _ = _four(mol, x)
    energies = np.array([-10.00, -9.99, np.nan, -9.90])  # conformer 2 failed: not a candidate
    members = build_ensemble(mol, coords, energies, TAU, dedup_rmsd=0.5)
    assert [m.sample_index for m in members] == [0, 3]  # 1 duplicates 0 (lower), 2 has no energy
    assert [m.rank for m in members] == [1, 2]
    assert [m.rel_energy for m in members] == pytest.approx([0.0, 0.10])
    w = math.exp(-0.10 / TAU)
    assert [m.population for m in members] == pytest.approx([1 / (1 + w), w / (1 + w)])

    # ordering without dedup: ascending energy, ties in sample order
    tied = build_ensemble(mol, coords, [-9.0, -10.0, -9.0, -9.5], TAU, dedup_rmsd=0.0)
    assert [m.sample_index for m in tied] == [1, 3, 0, 2]
    assert np.all(np.diff([m.energy for m in tied]) >= 0)
    assert sum(m.population for m in tied) == pytest.approx(1.0)

    # energy window (eV above the lowest): 0.06 keeps 0.00 and 0.05, not 0.20; populations renormalised
    assert within_window([0.0, 0.05, 0.20], 0.06).tolist() == [True, True, False]
    assert within_window([0.0, 0.05, 0.20], None).all()
    windowed = build_ensemble(mol, coords, [0.0, 0.20, 0.05, 0.30], TAU, dedup_rmsd=0.0, ewin=0.06)
    assert [m.sample_index for m in windowed] == [0, 2]
    w = math.exp(-0.05 / TAU)
    assert windowed[1].population == pytest.approx(w / (1 + w))
    assert build_ensemble(mol, coords, [np.nan] * 4, TAU) == []


def test_valid_conformers_drop_failed_broken_and_inverted():
    mol = Chem.AddHs(Chem.MolFromSmiles("C[C@H](O)CC"))
    AllChem.EmbedMolecule(mol, randomSeed=3)
    x = mol.GetConformer().GetPositions()
    stretched = x.copy()
    stretched[0] += 3.0 * (x[0] - x[1]) / np.linalg.norm(x[0] - x[1])  # the C0-C1 bond broken
    mirrored = x * np.array([-1.0, 1.0, 1.0])  # same bonds, inverted stereocentre
    coords = np.stack([x, stretched, mirrored, x, x])
    ok = valid_conformers(mol, coords, [0.0, 0.0, 0.0, 0.0, np.nan], converged=[True, True, True, False, True])
    assert ok.tolist() == [True, False, False, False, False]


def test_csv_beside_the_output(tmp_path):
    assert ensemble_csv_path(tmp_path / "out.sdf") == tmp_path / "out.ensemble.csv"
    rows = [("CC(C)O", Member(1, 4, -10.0, 0.0, 0.75)), ("CC(C)O", Member(2, 0, -9.9, 0.1, 0.25))]
    write_ensemble_csv(rows, tmp_path / "out.ensemble.csv")
    table = list(csv.DictReader((tmp_path / "out.ensemble.csv").open()))
    assert list(table[0]) == list(ensemble.CSV_COLUMNS)
    assert [r["sample_index"] for r in table] == ["4", "0"] and [r["rank"] for r in table] == ["1", "2"]
    assert float(table[1]["rel_energy_kcal_mol"]) == pytest.approx(0.1 * KCAL_MOL_PER_EV, abs=1e-4)
    assert sum(float(r["population"]) for r in table) == pytest.approx(1.0)


# ---------------------------------------------------------------------- shipped sampler path
def test_shipped_checkpoint_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "SAMPLER_DIR", tmp_path / "sampler")
    with pytest.raises(FileNotFoundError, match="expected .*sampler/checkpoint.pt"):
        pretrained.shipped_checkpoint()
    assert pretrained.describe_shipped() == "no provenance.json"


def test_describe_shipped_reads_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "SAMPLER_DIR", tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"stand-in")
    (tmp_path / "provenance.json").write_text(json.dumps(
        {"command": "adjoint-sampling train --preset spice-torsional", "commit": "0123456789abcdef0123",
         "wall_time_s": 495.4, "preset": "spice-torsional"}))
    assert pretrained.shipped_checkpoint() == tmp_path / "checkpoint.pt"
    assert pretrained.describe_shipped() == "preset spice-torsional, trained 8 min 15 s, commit 0123456789ab"
    (tmp_path / "provenance.json").write_text("{not json")
    assert pretrained.describe_shipped().startswith("provenance.json unreadable")


def test_shipped_path_is_inside_the_package():
    import adjoint_sampling

    assert pretrained.SAMPLER_DIR.parent.parent == pretrained.Path(adjoint_sampling.__file__).resolve().parent
