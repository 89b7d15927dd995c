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


def _fake_load_sampler(calls):
    """load_sampler stand-in: the samples depend on the checkpoint file's bytes, like a real model's."""

    def load(path, device="cpu"):
        offset = int.from_bytes(open(path, "rb").read()[:1], "little")
        calls.append(str(path))
        fake = FakeSampler()
        base = fake.sample
        fake.sample = lambda smiles, n, seed=0: base(smiles, n, seed=seed + offset)
        return fake

    return load


def test_rerun_with_another_checkpoint_or_references_recomputes(tmp_path, monkeypatch):
    import adjoint_sampling.sampling

    calls = []
    monkeypatch.setattr(adjoint_sampling.sampling, "load_sampler", _fake_load_sampler(calls))
    refs = _make_refs(tmp_path / "refs")
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"\x00model-A")
    out = tmp_path / "res"
    argv = ["--method", "adjoint-sampling,rdkit", "--checkpoint", str(ckpt), "--references", str(refs),
            "--out", str(out), "--no-progress", "--threads", "1"]
    assert main(argv) == 0
    first = json.loads((out / "molecules" / "m_tbu.json").read_text())
    rdkit_before = first["methods"]["rdkit"]

    # Same path, new content: the adjoint-sampling results must be the new model's, rdkit stays cached.
    ckpt.write_bytes(b"\x05model-B")
    assert main(argv) == 0
    second = json.loads((out / "molecules" / "m_tbu.json").read_text())
    a, b = first["methods"]["adjoint-sampling"], second["methods"]["adjoint-sampling"]
    assert a["inputs"]["checkpoint_sha256"] != b["inputs"]["checkpoint_sha256"]
    assert a["min_rmsd_per_reference"] != b["min_rmsd_per_reference"]
    assert second["methods"]["rdkit"] == rdkit_before
    config = json.loads((out / "config.json").read_text())
    assert config["method_inputs"]["adjoint-sampling"] == b["inputs"]

    # A copy of the same file elsewhere gives the same results: nothing is recomputed.
    copy = tmp_path / "copy.pt"
    copy.write_bytes(ckpt.read_bytes())
    before = (out / "molecules" / "m_tbu.json").read_bytes()
    assert main(argv[:3] + [str(copy)] + argv[4:]) == 0
    assert (out / "molecules" / "m_tbu.json").read_bytes() == before

    # Other reference files under the same ids: every method is recomputed against them.
    refs3 = _make_refs(tmp_path / "refs3", n=3)
    assert main(argv[:5] + [str(refs3)] + argv[6:]) == 0
    third = json.loads((out / "molecules" / "m_tbu.json").read_text())
    assert third["references"]["n_used"] == 3
    assert third["methods"]["rdkit"]["n_generated"] == 6
    assert third["methods"]["adjoint-sampling"]["n_generated"] == 6


def _assert_one_error_line(capsys, *words):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0]


def test_unreadable_checkpoint_is_an_error_before_anything_is_written(tmp_path, capsys):
    from adjoint_sampling.cli import main as project_main

    refs = _make_refs(tmp_path / "refs")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    out = tmp_path / "res"
    for ckpt in (bad, tmp_path / "missing.pt"):
        rc = project_main(["benchmark", "--method", "adjoint-sampling", "--checkpoint", str(ckpt),
                           "--references", str(refs), "--out", str(out), "--no-progress"])
        assert rc == 2
        _assert_one_error_line(capsys, ckpt.name)
        assert not out.exists()


def test_unknown_relaxation_energy_is_an_error_before_anything_is_written(tmp_path, capsys):
    refs = _make_refs(tmp_path / "refs")
    out = tmp_path / "res"
    rc = main(["--method", "rdkit+bogus", "--references", str(refs), "--out", str(out), "--no-progress"])
    assert rc == 2
    _assert_one_error_line(capsys, "bogus")
    assert not out.exists()
