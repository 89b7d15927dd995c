"""Torsional mode end to end: the e3nn controller's symmetry, the grid metrics, and the CLI (train,
resume, sample SDF, benchmark, zero-rotatable-bond molecules, bad input)."""
import json
import math

import numpy as np
import pytest
import torch
from rdkit import Chem

from adjoint_sampling.cli import main
from adjoint_sampling.graphs import collate, graph_from_smiles, with_torsions
from adjoint_sampling.torsion_controller import TorsionController
from benchmark.torsional import basin_populations, circular_w1, circular_w1_samples, grid_basin_populations, grid_centres

ELEMENTS = [1, 6, 7, 8, 9, 17]
FAST = ["sde.train_nfe=5", "sde.eval_nfe=5"]


def _random_rotation(seed):
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def test_controller_invariant_under_rotation_and_translation_odd_under_reflection():
    torch.manual_seed(0)
    model = TorsionController(len(ELEMENTS), scalars=8, vectors=4, layers=2).double()
    graphs = [with_torsions(graph_from_smiles(s)) for s in ("OCCO", "CC(=O)Nc1ccc(O)cc1")]
    batch = collate(graphs, ELEMENTS)
    pos = batch.torsion.seed_pos
    t = torch.tensor(0.3, dtype=torch.float64)
    v = model.forward_positions(t, pos, batch)
    assert v.shape == (batch.torsion.count, 1) and v.abs().min() > 0
    rot = _random_rotation(1)
    moved = pos @ rot.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert torch.allclose(model.forward_positions(t, moved, batch), v, atol=1e-9)
    mirrored = pos * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(model.forward_positions(t, mirrored, batch), -v, atol=1e-9)
    # and it depends on the torsion state and on time
    theta = torch.zeros(batch.torsion.count, 1, dtype=torch.float64)
    assert not torch.allclose(model(t, theta, batch), model(t, theta + 1.0, batch))
    assert not torch.allclose(model(t, theta, batch), model(torch.tensor(0.9, dtype=torch.float64), theta, batch))


def test_circular_w1_and_basins_on_hand_cases():
    centres = grid_centres(360)
    mass = np.zeros(360)
    mass[np.argmin(np.abs(centres - 0.5))] = 1.0  # all mass in the cell centred at 0.5 rad (width 1°)
    # samples all at -0.5: the short way round is 1 rad (the long way 2π - 1)
    assert circular_w1(np.full(100, -0.5 + 0.0), centres, mass) == pytest.approx(1.0, abs=0.01)
    # on the circle, π - 0.1 and -π + 0.1 are 0.2 apart
    assert circular_w1_samples(np.full(50, math.pi - 0.1), np.full(50, -math.pi + 0.1)) == pytest.approx(0.2, abs=1e-3)
    # uniform samples against a uniform grid: W1 near 0
    uniform = np.linspace(-math.pi, math.pi, 3600, endpoint=False) + math.pi / 3600
    assert circular_w1(uniform, centres, np.ones(360)) < 1e-3
    np.testing.assert_allclose(basin_populations(np.array([3.0, -3.0, 1.0, -1.0])), [0.5, 0.25, 0.25])
    np.testing.assert_allclose(grid_basin_populations(centres, np.ones(360)), [1 / 3, 1 / 3, 1 / 3], atol=1e-12)


def _bonds(mol):
    return {tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds()}


def test_cli_torsional_train_resume_sample_benchmark(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--preset", "tiny-torsional", "--no-progress", f"run_dir={run}", "sample.n=0", *FAST]
    assert main(base + ["--smiles", "CCCO", "c1ccccc1", "train.epochs=2"]) == 0
    assert "no rotatable bond" in capsys.readouterr().err  # benzene is reported and left out
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["mode"] == "torsional" and ck["molecules"] == [["CCCO", "CCCO"]]
    assert ck["seeds"][0].shape == (2, 12, 3)  # torsion.seeds=2 in the tiny preset
    assert ck["buffers"][0]["x1"].shape[1] == 1 and ck["buffers"][0]["x1"].abs().max() <= math.pi
    assert main(["train", "--resume", str(run), "--no-progress", "train.epochs=3"]) == 0
    ck2 = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck2["epoch"] == 3 and torch.equal(ck2["seeds"][0], ck["seeds"][0])

    out = tmp_path / "conf.sdf"
    assert main(["sample", "--checkpoint", str(run / "checkpoint.pt"), "--smiles", "CC(C)CO", "C[C@H](O)CC",
                 "c1ccccc1", "-n", "6", "-o", str(out), "--energy", "mmff"]) == 0
    err = capsys.readouterr().err
    assert "no rotatable bond" in err
    mols = list(Chem.SDMolSupplier(str(out), removeHs=False))
    assert len(mols) == 18
    for m in mols:  # valid by construction: connectivity and stereo kept, from the coordinates
        assert m.GetProp("connectivity_ok") == "1" and m.GetProp("stereo_ok") == "1"
        assert math.isfinite(float(m.GetProp("energy_eV")))
    chiral = [m for m in mols if m.GetProp("smiles") == "C[C@H](O)CC"]
    ref = Chem.AddHs(Chem.MolFromSmiles("C[C@H](O)CC"))
    assert all(_bonds(m) == _bonds(ref) for m in chiral)
    # torsions differ between conformers of one molecule (the SDE moved them)
    pos = np.array([m.GetConformer().GetPositions() for m in chiral])
    assert np.abs(pos[1:] - pos[0]).max() > 0.1

    # benchmark: the torsional checkpoint as a method beside ETKDG on a one-molecule reference set
    from test_benchmark_run import _make_refs
    from benchmark.__main__ import main as bench_main

    refs = _make_refs(tmp_path / "refs")
    res = tmp_path / "bench"
    assert bench_main(["--method", "rdkit", "--method", "adjoint-sampling", "--checkpoint", str(run / "checkpoint.pt"),
                       "--references", str(refs), "--out", str(res), "--no-progress", "--threads", "1",
                       "--limit", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| adjoint-sampling | 1 |" in printed and "| rdkit | 1 |" in printed


def test_torsional_bad_input(tmp_path, capsys):
    base = ["train", "--preset", "tiny-torsional", "--no-progress", f"run_dir={tmp_path / 'r'}", *FAST]

    def error(*args):
        code = main([str(a) for a in args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err and err[-1].startswith("error: ")
        return err[-1]

    assert "rotatable bond" in error(*base, "--smiles", "c1ccccc1")
    assert "invalid SMILES" in error(*base, "--smiles", "C1CC(")
    assert "mode" in error(*base, "mode=polar")
    assert "torsion.seeds" in error(*base, "torsion.seeds=0")
    assert "model.energy_gradient" in error(*base, "model.energy_gradient=true")
    assert not (tmp_path / "r").exists()


def test_torchrun_two_cpu_processes_torsional(tmp_path):
    """DDP with 2 gloo ranks in torsional mode: both ranks simulate torsions into their own buffers."""
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "adjoint_sampling.cli", "train", "--preset", "tiny-torsional", "--no-progress", f"run_dir={run}",
           "train.epochs=2", "sample.n=0", *FAST]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["mode"] == "torsional" and len(ck["buffers"]) == 2
    assert all(b["x1"].shape[1] == 1 and len(b["keys"]) > 0 for b in ck["buffers"])
    assert not torch.equal(ck["buffers"][0]["x1"], ck["buffers"][1]["x1"])
