"""Reference reader: list files, malformed XYZ blocks reported and skipped, mapping onto SMILES order."""

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from benchmark.mapping import MoleculeTemplate
from benchmark.references import (ReferenceSetError, locate_reference_set, parse_xyz, read_smiles_list,
                                  select_references)



def _block(symbols, coords, comment):
    return "\n".join([str(len(symbols)), comment] + [f"{s} {x:.5f} {y:.5f} {z:.5f}" for s, (x, y, z) in zip(symbols, coords)])


def test_list_file_with_header_and_bad_line(tmp_path):
    p = tmp_path / "set.txt"
    p.write_text("Rotatable_Bonds\tSMILES\tHash_Name\n3\tCCO\tm1\nbroken line\n4 CCN m2\n")
    entries, problems = read_smiles_list(p)
    assert [(e.mol_id, e.smiles, e.rotatable_bonds) for e in entries] == [("m1", "CCO", 3), ("m2", "CCN", 4)]
    assert len(problems) == 1 and ":3:" in problems[0]


def test_list_file_is_read_by_the_training_reader(tmp_path):
    """read_smiles_list is graphs.read_molecule_list (strict): plain lists too, counts None there."""
    from adjoint_sampling.graphs import read_molecule_list

    plain = tmp_path / "plain.txt"
    plain.write_text("# a comment\nCCO ethanol\nCCN\n")
    entries, problems = read_smiles_list(plain)
    assert [(e.mol_id, e.smiles, e.rotatable_bonds) for e in entries] == [("ethanol", "CCO", None), ("CCN", "CCN", None)]
    assert problems == []
    spice = tmp_path / "spice.txt"
    spice.write_text("3 CCO m1\nbroken line\nx CCN m2\n")  # no header: the first line sets the layout
    entries, problems = read_smiles_list(spice)
    assert [e.mol_id for e in entries] == ["m1"]
    assert len(problems) == 2 and problems[0].startswith(f"{spice}:2:") and problems[1].startswith(f"{spice}:3:")
    assert read_molecule_list(spice) == [("CCO", "m1"), ("broken", "line"), ("x", "CCN")]  # lenient without problems
    header_only = tmp_path / "x.txt"
    header_only.write_text("n SMILES id\n")
    entries, problems = read_smiles_list(header_only)
    assert entries == [] and len(problems) == 1 and "holds no SMILES" in problems[0]


def test_malformed_xyz_blocks_are_reported_and_skipped():
    good = _block(["O", "H", "H"], [(0, 0, 0), (0.96, 0, 0), (-0.24, 0.93, 0)], "-76.4")
    wrong_count = "3\nnot an energy\nO 0 0 0\nH 0.96 0 0\n" + "2\nc\nH 0 0 0\nH 0.7 0 0"  # 3 claimed, 2 given, then a block
    truncated = "3\n-1.0\nO 0 0 0\nH 1 0"
    text = "\n".join([good, "garbage here", wrong_count, good.replace("-76.4", "energy?"), truncated])
    res = parse_xyz(text, source="t.xyz")
    # good, the H2 block after the short one, the second good block
    assert [len(b.numbers) for b in res.blocks] == [3, 2, 3]
    assert res.blocks[0].energy == pytest.approx(-76.4) and res.blocks[2].energy is None
    assert len(res.problems) == 3
    assert any("garbage" in p for p in res.problems)
    assert any("truncated" in p or "fields" in p for p in res.problems)


def test_select_references_by_energy_or_order():
    blocks = parse_xyz("\n".join(_block(["H", "H"], [(0, 0, 0), (0.74, 0, 0)], str(e)) for e in [3.0, 1.0, 2.0])).blocks
    assert [b.energy for b in select_references(blocks, 2)] == [1.0, 2.0]
    blocks[0].energy = None
    assert [b.energy for b in select_references(blocks, 2)] == [None, 1.0]


def test_mapping_from_shuffled_atom_order_and_wrong_connectivity():
    tpl = MoleculeTemplate.from_smiles("CC(=O)Nc1ccccc1")
    mol = Chem.Mol(tpl.mol)
    AllChem.EmbedMolecule(mol, randomSeed=1)
    x = mol.GetConformer().GetPositions()
    perm = np.random.default_rng(0).permutation(len(x))
    mapped, why = tpl.map_conformer(tpl.numbers[perm], x[perm])
    assert why == "" and mapped is not None
    heavy = tpl.heavy
    # The mapping may differ from the original by a graph automorphism: compare bond lengths.
    assert tpl.connectivity_ok(mapped)
    assert np.allclose(np.linalg.norm(mapped[heavy][:, None] - mapped[heavy][None], axis=-1).sum(),
                       np.linalg.norm(x[heavy][:, None] - x[heavy][None], axis=-1).sum())
    broken = x.copy()
    broken[0] += 6.0  # pull a methyl carbon away: connectivity no longer matches
    assert tpl.map_conformer(tpl.numbers, broken)[0] is None
    assert not tpl.connectivity_ok(broken)
    assert tpl.map_conformer(tpl.numbers[:-1], x[:-1])[0] is None


def test_stereo_check_detects_mirror_image():
    tpl = MoleculeTemplate.from_smiles("C[C@H](N)C(=O)O")
    mol = Chem.Mol(tpl.mol)
    AllChem.EmbedMolecule(mol, randomSeed=2)
    x = mol.GetConformer().GetPositions()
    assert tpl.stereo_ok(x)
    assert not tpl.stereo_ok(x * np.array([-1, 1, 1]))


def test_locate_reference_set(tmp_path):
    with pytest.raises(ReferenceSetError):
        locate_reference_set(tmp_path)
    (tmp_path / "x_conformers").mkdir()
    (tmp_path / "x.txt").write_text("n SMILES id\n")
    rs = locate_reference_set(tmp_path)
    assert rs.list_file.name == "x.txt" and rs.conformer_dir.name == "x_conformers"


def test_shared_spice_layout(shared_dir):
    spice = shared_dir / "data" / "spice"
    if not spice.is_dir():
        pytest.skip(f"shared SPICE data not present at {spice}")
    rs = locate_reference_set(spice)
    entries, _ = rs.entries()
    present = [e for e in entries if rs.xyz_path(e.mol_id).is_file()]
    assert 0 < len(present) <= len(entries)
