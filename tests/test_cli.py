"""CLI end to end on the tiny preset (MMFF, one molecule), resume, sampling, and bad input."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem

from adjoint_sampling.cli import main

FAST = ["sde.train_nfe=10", "sde.eval_nfe=10"]


def run_cli(*args):
    return main([str(a) for a in args])


def _bonds(mol):
    return {tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds()}


def test_train_resume_sample_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli("train", "--preset", "tiny", "--no-progress", f"run_dir={run}", "train.epochs=2", "sample.n=0", *FAST) == 0
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 2 and len(ck["buffers"][0]["keys"]) > 0
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + 2 epochs
    # the tiny preset evaluates at epoch 2: a data-free importance ESS fraction in (0, 1]
    last = dict(zip(rows[0].split(","), rows[2].split(",")))
    assert 0 < float(last["eval_ess"]) <= 1

    # resume continues where it stopped (epochs 3-4), keeps the buffer and the log
    assert run_cli("train", "--resume", run, "--no-progress", "train.epochs=4") == 0
    ck2 = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck2["epoch"] == 4
    assert [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().strip().splitlines()[1:]] == [1, 2, 3, 4]
    assert len(ck2["buffers"][0]["keys"]) > len(ck["buffers"][0]["keys"])
    assert not torch.equal(ck2["model"]["embed.weight"], ck["model"]["embed.weight"])

    out = tmp_path / "conf.sdf"
    assert run_cli("sample", "--checkpoint", run / "checkpoint.pt", "--smiles", "CC(C)O", "-n", 5, "-o", out,
                   "--nfe", 10, "--energy", "mmff") == 0
    mols = [m for m in Chem.SDMolSupplier(str(out), removeHs=False)]
    assert len(mols) == 5
    ref = Chem.AddHs(Chem.MolFromSmiles("CC(C)O"))
    for m in mols:
        assert m is not None and m.GetNumAtoms() == ref.GetNumAtoms()
        assert [a.GetAtomicNum() for a in m.GetAtoms()] == [a.GetAtomicNum() for a in ref.GetAtoms()]
        assert _bonds(m) == _bonds(ref)  # SMILES bonds, not perceived ones
        assert math.isfinite(float(m.GetProp("energy_eV")))
        assert m.GetProp("connectivity_ok") in ("0", "1") and m.GetProp("stereo_ok") in ("0", "1")
    # with an energy, each conformer carries its self-normalised importance weight (they sum to 1)
    log_w = np.array([float(m.GetProp("log_weight")) for m in mols])
    assert np.exp(log_w).sum() == pytest.approx(1.0, rel=1e-4)
    assert "importance ESS" in capsys.readouterr().out

    from adjoint_sampling.sampling import load_sampler

    sampler = load_sampler(run / "checkpoint.pt")
    g = sampler.graph("CC(C)O")
    coords, log_rn = sampler.sample_graph(g, 4, seed=0, nfe=10, with_log_rn=True)
    energies = np.array([0.0, 0.01, 0.02, 0.03])
    lw = sampler.log_weights(g, coords, energies, log_rn)
    lw_shifted = sampler.log_weights(g, coords, energies + 5.0, log_rn)  # a constant offset cancels
    np.testing.assert_allclose(lw, lw_shifted, atol=1e-9)
    bumped = energies.copy()
    bumped[0] += sampler.cfg.loss.tau  # one conformer kT higher: its weight falls by e relative to the rest
    lw_b = sampler.log_weights(g, coords, bumped, log_rn)
    assert (lw_b[0] - lw_b[1]) - (lw[0] - lw[1]) == pytest.approx(-1.0, abs=1e-9)

    xyz = tmp_path / "conf.xyz"
    assert run_cli("sample", "--checkpoint", run / "checkpoint.pt", "--smiles", "CCO", "CCN", "-n", 2, "-o", xyz, "--nfe", 5) == 0
    lines = xyz.read_text().splitlines()
    assert lines[0] == "9" and len(lines) == 2 * (9 + 2) + 2 * (10 + 2)
    assert "log_weight" not in lines[1]  # no energy, no weights


def _error(capsys, *args):
    code = run_cli(*args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    base = ["train", "--preset", "tiny", "--no-progress", f"run_dir={tmp_path / 'r'}"]
    assert "invalid SMILES" in _error(capsys, *base, "--smiles", "C1CC(")
    assert "fragments" in _error(capsys, *base, "--smiles", "CCO.O")
    assert "max_atoms" in _error(capsys, *base, "--smiles", "CCCCCCCCCC", "data.max_atoms=10")
    assert "unknown config key 'train.nonsense'" in _error(capsys, *base, "train.nonsense=1")
    assert "not supported" in _error(capsys, *base, "--smiles", "CB(C)C")  # MMFF has no boron
    assert "not in the model's element list" in _error(capsys, *base, "--smiles", "C[Si](C)(C)C", "energy=xtb", "model.elements=[1,6]")
    assert "unknown preset" in _error(capsys, "train", "--preset", "nope")
    assert "not found" in _error(capsys, "sample", "--checkpoint", tmp_path / "missing.pt", "--smiles", "CCO")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert "cannot read checkpoint" in _error(capsys, "sample", "--checkpoint", bad, "--smiles", "CCO")
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_existing_run_dir_is_never_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli("train", "--preset", "tiny", "--no-progress", f"run_dir={run}", "train.epochs=1", "sample.n=0", *FAST) == 0
    before = (run / "checkpoint.pt").read_bytes()
    assert "already holds a checkpoint" in _error(capsys, "train", "--preset", "tiny", "--no-progress", f"run_dir={run}")
    assert (run / "checkpoint.pt").read_bytes() == before
    # a resume with a mismatched checkpoint refuses and leaves the run alone
    other = tmp_path / "other"
    assert run_cli("train", "--preset", "tiny", "--no-progress", f"run_dir={other}", "train.epochs=1", "sample.n=0",
                   "model.hidden=8", *FAST) == 0
    ck = torch.load(other / "checkpoint.pt", weights_only=True)
    ck["config"]["model"]["hidden"] = 16
    torch.save(ck, other / "checkpoint.pt")
    assert "does not match" in _error(capsys, "train", "--resume", other, "--no-progress")


def test_molecule_list_formats(tmp_path):
    from adjoint_sampling.graphs import read_molecule_list

    plain = tmp_path / "plain.txt"
    plain.write_text("CCO\n# comment\n\nCCN amine\n")
    assert read_molecule_list(plain) == [("CCO", "CCO"), ("CCN", "amine")]
    spice = tmp_path / "spice.txt"
    spice.write_text("Rotatable_Bonds\tSMILES\tRot_Hash\n3\tCCCCO\trot3_abc\n4\tCCCCCO\trot4_def\n")
    assert read_molecule_list(spice) == [("CCCCO", "rot3_abc"), ("CCCCCO", "rot4_def")]


def test_spice_list_reads(shared_dir):
    from adjoint_sampling.graphs import read_molecule_list

    path = shared_dir / "data/spice/spice_test.txt"
    entries = read_molecule_list(path)
    rows = [line for line in path.read_text().splitlines()[1:] if line.strip()]
    assert len(entries) == len(rows) and all(name.startswith("rot") for _, name in entries)
    assert entries[0] == tuple(rows[0].split("\t")[1:3])


def test_torchrun_two_cpu_processes(tmp_path):
    """DDP with 2 gloo ranks: both simulate, the checkpoint holds both ranks' buffers."""
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "adjoint_sampling.cli", "train", "--preset", "tiny", "--no-progress", f"run_dir={run}",
           "train.epochs=2", "sample.n=0", *FAST]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert len(ck["buffers"]) == 2 and all(len(b["keys"]) > 0 for b in ck["buffers"])
    assert not torch.equal(ck["buffers"][0]["x1"], ck["buffers"][1]["x1"])  # ranks draw different samples


def test_skip_invalid_reports_and_continues(tmp_path, capsys):
    lst = tmp_path / "mols.txt"
    lst.write_text("CCO good\nC1CC( broken\nCB(C)C boron\n")
    base = ["train", "--preset", "tiny", "--no-progress", f"run_dir={tmp_path / 'r'}", f"data.molecules={lst}",
            "train.epochs=1", "sample.n=0", *FAST]
    assert "invalid SMILES" in _error(capsys, *base)
    assert run_cli(*base, "data.skip_invalid=true") == 0
    err = capsys.readouterr().err
    assert "skipping broken" in err and "skipping boron" in err and "skipped 2 of 3" in err
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ck["molecules"] == [["CCO", "good"]]


def test_energy_gradient_controller_trains_and_samples_with_mmff(tmp_path):
    """model.energy_gradient on a molecule: the checkpoint rebuilds its energy (MMFF) to sample."""
    run = tmp_path / "run"
    assert run_cli("train", "--preset", "tiny", "--no-progress", f"run_dir={run}", "train.epochs=1", "sample.n=0",
                   "model.energy_gradient=true", *FAST) == 0
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert any(k.startswith("beta.") for k in ck["model"]) and any(k.startswith("base.") for k in ck["model"])
    out = tmp_path / "conf.xyz"
    assert run_cli("sample", "--checkpoint", run / "checkpoint.pt", "--smiles", "CCO", "-n", 3, "-o", out, "--nfe", 10) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 3 * (9 + 2)
    coords = [list(map(float, ln.split()[1:])) for ln in lines if len(ln.split()) == 4]
    assert len(coords) == 27 and all(abs(c) < 1e3 for row in coords for c in row)
