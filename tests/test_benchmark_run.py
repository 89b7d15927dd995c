"""End-to-end runs on a tiny reference set made in a tmp dir from ETKDG conformers."""
import json
import sys
import types

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from benchmark.__main__ import main
from benchmark.references import locate_reference_set
from benchmark.runner import BenchmarkConfig, run_benchmark

MOLS = {"m_tbu": "CC(C)(C)OCC", "m_acid": "CCC(=O)O"}


def _make_refs(root, n=4):
    (root / "tiny_conformers").mkdir(parents=True)
    lines = ["Rotatable_Bonds\tSMILES\tHash_Name"]
    for mol_id, smi in MOLS.items():
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        cids = AllChem.EmbedMultipleConfs(mol, n, randomSeed=42)
        order = np.random.default_rng(0).permutation(mol.GetNumAtoms())  # references in another atom order
        blocks = []
        for k, c in enumerate(cids):
            x = mol.GetConformer(c).GetPositions()
            atoms = [f"{mol.GetAtomWithIdx(int(a)).GetSymbol()} {x[a][0]:.6f} {x[a][1]:.6f} {x[a][2]:.6f}" for a in order]
            blocks.append("\n".join([str(len(order)), f"{-10.0 + k}"] + atoms))
        (root / "tiny_conformers" / mol_id).mkdir()
        (root / "tiny_conformers" / mol_id / "crest_conformers.xyz").write_text("\n".join(blocks) + "\n")
        lines.append(f"2\t{smi}\t{mol_id}")
    lines.append("2\tCCCC\tm_missing")
    (root / "tiny.txt").write_text("\n".join(lines) + "\n")
    return root


class FakeSampler:
    """Stands in for adjoint_sampling's sampler: ETKDG with a per-call seed, plus one broken sample."""

    def __init__(self):
        self.calls = []

    def sample(self, smiles, n, seed=0):
        self.calls.append(smiles)
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        cids = list(AllChem.EmbedMultipleConfs(mol, n, randomSeed=seed + 7))
        x = np.array([mol.GetConformer(c).GetPositions() for c in cids])
        x[0] *= 3.0  # stretched: wrong connectivity
        return x


def test_cli_end_to_end_and_resume(tmp_path, capsys):
    refs = _make_refs(tmp_path / "refs")
    out = tmp_path / "res"
    argv = ["--method", "rdkit", "--references", str(refs), "--out", str(out), "--no-progress", "--threads", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "| rdkit | 2 |" in printed.out
    assert "m_missing" in printed.err
    for name in ("metrics.csv", "coverage.png", "summary.md", "messages.txt"):
        assert (out / name).is_file()
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 20
    rec = json.loads((out / "molecules" / "m_tbu.json").read_text())
    assert rec["references"]["n_used"] == 4 and rec["references"]["n_unmapped"] == 0
    assert rec["methods"]["rdkit"]["n_generated"] == 8
    # Resume: a finished molecule is not recomputed (its file stays byte-identical), a deleted one is.
    before = (out / "molecules" / "m_tbu.json").read_bytes()
    (out / "molecules" / "m_acid.json").unlink()
    assert main(argv) == 0
    assert (out / "molecules" / "m_tbu.json").read_bytes() == before
    assert (out / "molecules" / "m_acid.json").is_file()


def test_fake_sampler_sdf_and_relaxation(tmp_path, monkeypatch):
    refs = locate_reference_set(_make_refs(tmp_path / "refs"))
    # sdf method: the reference conformers of m_tbu written in SMILES order -> perfect coverage
    sdf_dir = tmp_path / "sdf"
    sdf_dir.mkdir()
    mol = Chem.AddHs(Chem.MolFromSmiles(MOLS["m_tbu"]))
    AllChem.EmbedMultipleConfs(mol, 4, randomSeed=42)
    writer = Chem.SDWriter(str(sdf_dir / "m_tbu.sdf"))
    for c in mol.GetConformers():
        writer.write(mol, confId=c.GetId())
    writer.close()

    relaxed_calls = []

    def fake_relax(energy, numbers, coords, charge=0, spin=1, mol=None, fmax=0.05, steps=500, optimizer="lbfgs"):
        relaxed_calls.append((energy, fmax, coords.shape))
        return types.SimpleNamespace(coords=coords, energies=np.zeros(len(coords)),
                                     converged=np.ones(len(coords), bool), n_steps=np.zeros(len(coords)))

    monkeypatch.setitem(sys.modules, "energies.relax", types.SimpleNamespace(relax_conformers=fake_relax))
    sampler = FakeSampler()
    from benchmark.methods import AdjointSamplingGenerator

    cfg = BenchmarkConfig(methods=["adjoint-sampling", "adjoint-sampling+fake", f"sdf:{sdf_dir}"],
                          out_dir=str(tmp_path / "res"), ids=["m_tbu"], fmax=0.03, progress=False, threads=1)
    result = run_benchmark(refs, cfg, generators={"adjoint-sampling": AdjointSamplingGenerator(sampler=sampler)},
                           energies={"fake": "FAKE-ENERGY"}, log=lambda m: None)
    assert sampler.calls == [MOLS["m_tbu"]]  # one draw shared by the raw and the relaxed variant
    assert relaxed_calls and relaxed_calls[0][0] == "FAKE-ENERGY" and relaxed_calls[0][1] == 0.03
    s = result["summary"]
    assert s["sdf:sdf"]["recall_coverage_mean"][1] == pytest.approx(1.0)  # exact copies: covered at 0.125 Å
    rec = json.loads((tmp_path / "res" / "molecules" / "m_tbu.json").read_text())
    assert rec["methods"]["adjoint-sampling"]["n_wrong_connectivity"] == 1
    assert rec["methods"]["sdf:sdf"]["n_generated"] == 4
    assert "m_tbu" in rec["id"]


def test_rdkit_generator_seed_zero_gives_distinct_conformers():
    from benchmark.mapping import MoleculeTemplate
    from benchmark.methods import RDKitGenerator

    tpl = MoleculeTemplate.from_smiles("CCCCOCCCC")
    x = RDKitGenerator(threads=1).generate("m", tpl, 4, seed=0).coords
    assert np.isfinite(x).all()
    assert np.abs(x[0] - x[1]).max() > 1e-3 and np.abs(x[2] - x[3]).max() > 1e-3
