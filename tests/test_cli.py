"""CLI end to end on the tiny preset (MMFF, one molecule), resume, sampling, bad input (one table),
divergence, concurrent writers and a kill -9 during training; the relaxed ensemble of ``sample --relax``
and the shipped sampler used without --checkpoint (on a tiny torsional checkpoint)."""
import math
import os
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


# ---------------------------------------------------------------------- bad input, one table
LONG_CHAIN = "C" * 70  # 212 atoms with hydrogens: above sample's default --max-atoms=200

TRAIN = ["train", "--preset", "tiny", "--no-progress", "run_dir={tmp}/r", "sample.n=0"]
SAMPLE = ["sample", "--checkpoint", "{ck}", "--no-progress", "-n", "2", "--nfe", "2", "--smiles", "CCO"]

# (case, command line ({tmp}: the case's empty directory, {ck}/{run}: a trained checkpoint and its run,
#  {fx}: prepared bad files), first words of the message after "error: ")
BAD_INPUT = [
    # train: molecules
    ("invalid SMILES", TRAIN + ["--smiles", "C1CC("], "invalid SMILES 'C1CC('"),
    ("fragments", TRAIN + ["--smiles", "CCO.O"], "SMILES 'CCO.O' has 2 fragments"),
    ("too many atoms", TRAIN + ["--smiles", "CCCCCCCCCC", "data.max_atoms=10"], "molecule 'CCCCCCCCCC' has 32 atoms"),
    ("element not in the energy", TRAIN + ["--smiles", "CB(C)C"], "CB(C)C: element(s) B not supported by energy 'mmff'"),
    ("element not in the model", TRAIN + ["--smiles", "C[Si](C)(C)C", "energy=xtb", "model.elements=[1,6]"],
     "molecule 'C[Si](C)(C)C': element(s) Si not in the model's element list"),
    ("no MMFF parameters ([H][H])", TRAIN + ["--smiles", "[H][H]"], "[H][H]: MMFF94 has no parameters"),
    ("binary molecule list", TRAIN + ["--molecules", "{fx}/binary.txt"], "molecule list {fx}/binary.txt is not a UTF-8"),
    ("missing molecule list", TRAIN + ["--molecules", "{fx}/none.txt"], "molecule list not found"),
    ("unknown bundled list", TRAIN + ["--molecules", "bundled:../tiny"], "unknown bundled molecule set"),
    # train: config
    ("unknown key", TRAIN + ["train.nonsense=1"], "unknown config key 'train.nonsense'"),
    ("unknown preset", ["train", "--preset", "nope", "run_dir={tmp}/r"], "unknown preset 'nope'"),
    ("binary preset", ["train", "--preset", "{fx}/binary.yaml", "run_dir={tmp}/r"], "preset {fx}/binary.yaml is not a UTF-8"),
    ("epochs 0", TRAIN + ["train.epochs=0"], "config key 'train.epochs' must be an integer >= 1"),
    ("batch size 0", TRAIN + ["train.batch_size=0"], "config key 'train.batch_size' must be an integer >= 1"),
    ("train nfe 0", TRAIN + ["sde.train_nfe=0"], "config key 'sde.train_nfe' must be an integer >= 1"),
    ("layers 0", TRAIN + ["model.layers=0"], "config key 'model.layers' must be an integer >= 1"),
    ("hidden 0", TRAIN + ["model.hidden=0"], "config key 'model.hidden' must be an integer >= 1"),
    ("tau nan", TRAIN + ["loss.tau=nan"], "config key 'loss.tau' must be a finite number > 0"),
    ("tau negative", TRAIN + ["loss.tau=-1"], "config key 'loss.tau' must be a finite number > 0"),
    ("lr inf", TRAIN + ["train.lr=inf"], "config key 'train.lr' must be a finite number > 0"),
    ("unknown energy", TRAIN + ["energy=bogus"], "unknown energy 'bogus'"),
    ("sample.out extension", TRAIN + ["sample.n=2", "sample.out=x.pdb"], "config key 'sample.out' must name a .sdf"),
    ("sample.smiles invalid", TRAIN + ["sample.n=2", "sample.smiles=C1CC("], "invalid SMILES 'C1CC('"),
    # train: run directories
    ("run dir holds a checkpoint", ["train", "--preset", "tiny", "--no-progress", "run_dir={run}"],
     "run directory {run} already holds a checkpoint"),
    ("run dir of a run killed before its first checkpoint", ["train", "--preset", "tiny", "run_dir={fx}/unfinished"],
     "run directory {fx}/unfinished holds a run stopped before its first checkpoint"),
    ("run dir locked by a live process", ["train", "--preset", "tiny", "run_dir={fx}/locked"],
     "run directory {fx}/locked is in use by pid"),
    ("run dir is a file", ["train", "--preset", "tiny", "run_dir={fx}/binary.txt"], "cannot create run directory"),
    # train --resume
    ("resume changes the model", ["train", "--resume", "{run}", "train.lr=0.5", "model.hidden=999"],
     "--resume keeps the checkpoint's config: cannot change train.lr, model.hidden"),
    ("resume with --smiles", ["train", "--resume", "{run}", "--smiles", "CCO"], "--resume continues the checkpoint's run"),
    ("resume with --molecules", ["train", "--resume", "{run}", "--molecules", "bundled:tiny"],
     "--resume continues the checkpoint's run"),
    ("resume with epochs 0", ["train", "--resume", "{run}", "train.epochs=0"], "config key 'train.epochs' must be"),
    ("resume without checkpoint", ["train", "--resume", "{fx}/unfinished"], "nothing to resume"),
    ("resume of a checkpoint unlike its config", ["train", "--resume", "{fx}/mismatch"],
     "checkpoint does not match the configured model"),
    ("resume format 999", ["train", "--resume", "{fx}/format999"], "{fx}/format999/checkpoint.pt: checkpoint format 999"),
    ("resume config not a mapping", ["train", "--resume", "{fx}/listconfig"],
     "{fx}/listconfig/checkpoint.pt: the checkpoint's config is a list"),
    # sample
    ("missing checkpoint", ["sample", "--checkpoint", "{tmp}/missing.pt", "--smiles", "CCO", "-o", "{tmp}/o.sdf"],
     "checkpoint not found"),
    ("garbage checkpoint", ["sample", "--checkpoint", "{fx}/garbage.pt", "--smiles", "CCO", "-o", "{tmp}/o.sdf"],
     "cannot read checkpoint"),
    ("checkpoint format 999", ["sample", "--checkpoint", "{fx}/format999/checkpoint.pt", "--smiles", "CCO",
                               "-o", "{tmp}/o.sdf"], "{fx}/format999/checkpoint.pt: checkpoint format 999"),
    ("checkpoint config not a mapping", ["sample", "--checkpoint", "{fx}/listconfig/checkpoint.pt", "--smiles", "CCO",
                                         "-o", "{tmp}/o.sdf"], "{fx}/listconfig/checkpoint.pt: the checkpoint's config"),
    ("output extension", SAMPLE + ["-o", "{tmp}/o.pdb"], "output file must end in .sdf or .xyz"),
    ("output is a directory", SAMPLE + ["-o", "{tmp}"], "output {tmp} is a directory"),
    ("output under a file", SAMPLE + ["-o", "{fx}/binary.txt/o.sdf"], "cannot write {fx}/binary.txt/o.sdf"),
    ("output directory unwritable", SAMPLE + ["-o", "{unwritable}/o.sdf"], "cannot write {unwritable}/o.sdf"),
    ("nfe negative", SAMPLE + ["-o", "{tmp}/o.sdf", "--nfe", "-5"], "--nfe must be >= 1, got -5"),
    ("n zero", SAMPLE + ["-o", "{tmp}/o.sdf", "-n", "0"], "-n must be >= 1, got 0"),
    ("unknown energy", SAMPLE + ["-o", "{tmp}/o.sdf", "--energy", "bogus"], "unknown energy 'bogus'"),
    ("relax without energy", SAMPLE + ["-o", "{tmp}/o.sdf", "--relax"], "--relax needs an energy"),
    ("relax with an unknown energy", SAMPLE + ["-o", "{tmp}/o.sdf", "--relax", "bogus"], "unknown energy 'bogus'"),
    ("relax and --energy differ", SAMPLE + ["-o", "{tmp}/o.sdf", "--relax", "mmff", "--energy", "xtb"],
     "--relax mmff and --energy xtb name different energies"),
    ("ensemble flags without relax", SAMPLE + ["-o", "{tmp}/o.sdf", "--ewin", "0.1", "--tau", "0.05"],
     "--relax ENERGY is needed for --ewin, --tau"),
    ("tau zero", SAMPLE + ["-o", "{tmp}/o.sdf", "--relax", "mmff", "--tau", "0"], "--tau must be a finite number > 0"),
    ("ewin nan", SAMPLE + ["-o", "{tmp}/o.sdf", "--relax", "mmff", "--ewin", "nan"], "--ewin must be a finite number >= 0"),
    ("dedup rmsd negative", SAMPLE + ["-o", "{tmp}/o.sdf", "--relax", "mmff", "--dedup-rmsd", "-1"],
     "--dedup-rmsd must be a finite number >= 0"),
    ("invalid SMILES", ["sample", "--checkpoint", "{ck}", "--smiles", "C1CC(", "-o", "{tmp}/o.sdf"], "invalid SMILES"),
    ("binary SMILES file", ["sample", "--checkpoint", "{ck}", "--smiles-file", "{fx}/binary.txt", "-o", "{tmp}/o.sdf"],
     "molecule list {fx}/binary.txt is not a UTF-8"),
    ("above --max-atoms", ["sample", "--checkpoint", "{ck}", "--smiles", LONG_CHAIN, "-o", "{tmp}/o.sdf"],
     f"molecule '{LONG_CHAIN}' has 212 atoms (with hydrogens), more than --max-atoms=200"),
    ("unsupported by the energy", ["sample", "--checkpoint", "{ck}", "--smiles", "[H][H]", "--energy", "mmff",
                                   "-o", "{tmp}/o.sdf"], "[H][H]: MMFF94 has no parameters"),
]


def _tree(root: Path) -> dict:
    """Every path under root (hidden ones too; files with size and mtime): what a command must leave alone.
    Directory mtimes are left out: a probe file created and removed (is the output writable?) moves them."""
    return {str(p.relative_to(root)): None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def bad_input_fixtures(tmp_path_factory):
    """A trained tiny run, checkpoints broken in one way each, binary files, an unfinished run, a locked run."""
    from adjoint_sampling.checkpoint import RunDirLock

    fx = tmp_path_factory.mktemp("fixtures")
    run = fx / "run"
    assert run_cli("train", "--preset", "tiny", "--no-progress", f"run_dir={run}", "train.epochs=1", "sample.n=0",
                   *FAST) == 0
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    wider = {**ck["config"], "model": {**ck["config"]["model"], "hidden": 2 * ck["config"]["model"]["hidden"]}}
    for name, change in (("format999", {"format": 999}), ("listconfig", {"config": [1, 2]}), ("mismatch", {"config": wider})):
        (fx / name).mkdir()
        torch.save({**ck, **change}, fx / name / "checkpoint.pt")
    (fx / "garbage.pt").write_bytes(b"garbage")
    (fx / "binary.txt").write_bytes(bytes(range(128, 256)) * 4)
    (fx / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01mode: cartesian\n")
    (fx / "unfinished").mkdir()
    (fx / "unfinished" / "config.yaml").write_text("run_dir: x\n")
    (fx / "unfinished" / "metrics.csv").write_text("epoch,loss\n1,0.5\n")
    (fx / "locked").mkdir()
    lock = RunDirLock(fx / "locked")  # held for the module: as by a training process still running
    yield fx, run
    lock.release()


def _unwritable_dir(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        path = tmp_path.parent / f"{tmp_path.name}-ro"
        path.mkdir(exist_ok=True)
        path.chmod(0o555)
        return path
    if Path("/proc").is_dir():  # root writes anywhere a mode bit forbids; /proc takes no new files
        return Path("/proc")
    pytest.skip("no unwritable directory for root on this system")


@pytest.mark.parametrize("case,argv,expected", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_one_error_line_exit_2_nothing_written(case, argv, expected, bad_input_fixtures, tmp_path,
                                                         capsys, monkeypatch):
    fx, run = bad_input_fixtures
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    values = {"tmp": str(work), "ck": str(run / "checkpoint.pt"), "run": str(run), "fx": str(fx)}
    if any("{unwritable}" in a for a in argv):
        values["unwritable"] = str(_unwritable_dir(tmp_path))
    argv = [a.format(**values) for a in argv]
    expected = expected.format(**values)
    from adjoint_sampling.sampling import Sampler
    from adjoint_sampling.trainer import Trainer

    def no_work(*_a, **_k):  # bad input is refused before any training or sampling, not after it
        raise AssertionError("bad input reached training or sampling")

    monkeypatch.setattr(Trainer, "fit", no_work)
    monkeypatch.setattr(Sampler, "sample_graph", no_work)
    before_fx, before_work = _tree(fx), _tree(work)
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2, (code, captured.err[-1000:])
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert err[0][len("error: "):].startswith(expected), err[0]
    assert _tree(work) == before_work, "a refused command wrote into its working directory"
    assert _tree(fx) == before_fx, "a refused command changed the run, checkpoints or lock"


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


# ---------------------------------------------------------------------- resume, divergence, concurrency
def _logged_epochs(run: Path) -> list:
    return [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().strip().splitlines()[1:]]


def test_resume_drops_rows_logged_after_the_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli("train", "--preset", "tiny", "--no-progress", f"run_dir={run}", "train.epochs=2", "sample.n=0", *FAST) == 0
    # a run killed after logging epochs 3-4 but before checkpointing them, the last row cut short
    with open(run / "metrics.csv", "a") as f:
        f.write("3,9.9,123456,1,1,0,1,1,,,,,0,0,0\r\n4,9.9,123456,1,1,0,1,1,,,,,0,0,0\r\n5,1.")
    capsys.readouterr()
    assert run_cli("train", "--resume", run, "--no-progress", "train.epochs=4", "model.hidden=16") == 0
    out = capsys.readouterr().out
    assert "with train.epochs=4 model.hidden=16 (the checkpoint's value)" in out  # each override: applied or kept
    assert _logged_epochs(run) == [1, 2, 3, 4]
    assert "123456" not in (run / "metrics.csv").read_text()
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 4


def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from adjoint_sampling.trainer import Trainer

    steps = Trainer.train_steps

    def nan_at_epoch_3(self):
        loss = steps(self)
        return float("nan") if self.epoch == 2 else loss

    monkeypatch.setattr(Trainer, "train_steps", nan_at_epoch_3)
    run = tmp_path / "run"
    base = ["train", "--preset", "tiny", "--no-progress", "train.epochs=5", "train.checkpoint_every=1", *FAST]
    msg = _error(capsys, *base, f"run_dir={run}")
    assert msg.startswith("error: the training loss became nan at epoch 3") and "checkpoint of epoch 2 is kept" in msg
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert not (run / "samples.sdf").exists()

    def nan_weights_at_epoch_2(self):  # a finite loss but a broken model: no checkpoint of it either
        loss = steps(self)
        if self.epoch == 1:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return loss

    monkeypatch.setattr(Trainer, "train_steps", nan_weights_at_epoch_2)
    run2 = tmp_path / "run2"
    msg = _error(capsys, *base, f"run_dir={run2}")
    assert "the model's parameters became non-finite at epoch 2" in msg and "checkpoint of epoch 1 is kept" in msg
    ck = torch.load(run2 / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_concurrent_conformer_writers_to_one_path_both_succeed_whole(tmp_path):
    """Writer A is halfway through when writer B writes the same file; both succeed and the file is
    one writer's output, whole (a shared temp name made A fail or B's file hold A's molecule)."""
    import threading

    from adjoint_sampling.sampling import ConformerRecord, write_conformers

    def records(smiles, n):
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        coords = np.random.default_rng(0).normal(size=(mol.GetNumAtoms(), 3))
        return [ConformerRecord(smiles, smiles, mol, coords) for _ in range(n)]

    halfway, go_on = threading.Event(), threading.Event()

    class Slow(list):
        def __iter__(self):
            for k, r in enumerate(list.__iter__(self)):
                if k == 2:
                    halfway.set()
                    assert go_on.wait(30)
                yield r

    out = tmp_path / "same.xyz"
    result = {}

    def write_a():
        try:
            result["a"] = write_conformers(Slow(records("CCO", 4)), out)
        except Exception as exc:  # noqa: BLE001 - reported below
            result["a"] = exc

    thread = threading.Thread(target=write_a)
    thread.start()
    assert halfway.wait(30)
    result["b"] = write_conformers(records("CCN", 3), out)
    go_on.set()
    thread.join(30)
    assert isinstance(result["a"], dict) and result["a"]["written"] == 4, result["a"]
    assert isinstance(result["b"], dict) and result["b"]["written"] == 3, result["b"]
    lines = out.read_text().splitlines()
    assert len(lines) == 4 * (9 + 2) and all("smiles=CCO" in lines[k * 11 + 1] for k in range(4))  # A renamed last
    assert not [p.name for p in tmp_path.iterdir() if p.name != out.name]  # no temp left behind


def test_kill_9_during_training_then_resume_logs_each_epoch_once(tmp_path, capsys):
    """A training process killed with SIGKILL between checkpoints: while it ran, a second train into its
    run dir and a resume of it were refused; afterwards its lock is gone and the resume completes with
    each epoch logged once."""
    import signal
    import time

    run = tmp_path / "run"
    every = 20  # the kill lands well inside a checkpoint interval, whatever the machine's speed
    cmd = [sys.executable, "-m", "adjoint_sampling.cli", "train", "--preset", "tiny", "--no-progress", f"run_dir={run}",
           "train.epochs=5000", f"train.checkpoint_every={every}", "train.eval_every=0", "sample.n=0",
           "sde.train_nfe=5", "sde.eval_nfe=5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (run / "metrics.csv").exists() and (run / "checkpoint.pt").exists() and len(_logged_epochs(run)) >= 5:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        for second in (cmd[3:], ["train", "--resume", run, "--no-progress", "train.epochs=6000"]):
            assert _error(capsys, *second).startswith(f"error: run directory {run} is in use by pid {proc.pid} ")
        while time.time() < deadline and proc.poll() is None:  # kill between checkpoints, never right at one
            logged = _logged_epochs(run)
            if logged and 3 <= max(logged) % every <= every // 2:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    ck_epoch = torch.load(run / "checkpoint.pt", weights_only=True)["epoch"]
    logged = _logged_epochs(run)
    assert ck_epoch % every == 0 and max(logged) > ck_epoch  # rows after the checkpoint: the resume must drop them
    final = ck_epoch + 3
    resumed = subprocess.run([sys.executable, "-m", "adjoint_sampling.cli", "train", "--resume", str(run),
                              "--no-progress", f"train.epochs={final}"], capture_output=True, text=True, env=env,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _logged_epochs(run) == list(range(1, final + 1))
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == final


# ---------------------------------------------------------------------- sample --relax: the ensemble
@pytest.fixture(scope="module")
def tiny_torsional(tmp_path_factory):
    """A tiny torsional checkpoint (MMFF, one epoch): enough to draw conformers to relax."""
    run = tmp_path_factory.mktemp("tiny-torsional") / "run"
    assert run_cli("train", "--preset", "tiny-torsional", "--no-progress", f"run_dir={run}", "train.epochs=1",
                   "sample.n=0", *FAST) == 0
    return run / "checkpoint.pt"


def _csv_rows(path):
    import csv

    return list(csv.DictReader(path.open()))


def test_sample_relax_writes_a_deduplicated_boltzmann_ensemble(tiny_torsional, tmp_path, capsys):
    from adjoint_sampling.ensemble import heavy_atom_rmsd

    out = tmp_path / "ens.sdf"
    smiles = ["CCCCO", "C[C@H](O)CC"]
    assert run_cli("sample", "--checkpoint", tiny_torsional, "--smiles", *smiles, "-n", 16, "--nfe", 10,
                   "--relax", "mmff", "-o", out, "--no-progress") == 0
    err = capsys.readouterr().err
    assert "tau = 0.025852 eV (the checkpoint's loss.tau; T = tau/k_B = 300.0 K)" in err
    rows = _csv_rows(tmp_path / "ens.ensemble.csv")
    assert list(rows[0]) == ["molecule", "rank", "sample_index", "energy_eV", "rel_energy_eV", "rel_energy_kcal_mol",
                             "population"]
    mols = list(Chem.SDMolSupplier(str(out), removeHs=False))
    assert len(mols) == len(rows)  # the SDF holds the ensemble, in the CSV's order
    for smi in smiles:
        mine = [r for r in rows if r["molecule"] == smi]
        confs = [m for m in mols if m.GetProp("smiles") == smi]
        energies = [float(r["energy_eV"]) for r in mine]
        assert mine and energies == sorted(energies)
        assert [int(r["rank"]) for r in mine] == list(range(1, len(mine) + 1))
        assert float(mine[0]["rel_energy_eV"]) == 0.0
        assert sum(float(r["population"]) for r in mine) == pytest.approx(1.0, abs=1e-6)
        assert [m.GetProp("sample_index") for m in confs] == [r["sample_index"] for r in mine]
        assert [float(m.GetProp("energy_eV")) for m in confs] == pytest.approx(energies, abs=1e-6)
        assert [float(m.GetProp("population")) for m in confs] == pytest.approx([float(r["population"]) for r in mine])
        assert all(m.GetProp("connectivity_ok") == "1" and m.GetProp("stereo_ok") == "1" for m in confs)
        pos = [m.GetConformer().GetPositions() for m in confs]
        ref = Chem.AddHs(Chem.MolFromSmiles(smi))
        for i in range(len(pos)):
            for j in range(i):
                assert heavy_atom_rmsd(ref, pos[i], pos[j]) >= 0.5
    # 2-butanol has three heavy-atom rotamers: 16 samples relax onto far fewer unique minima
    assert len([r for r in rows if r["molecule"] == "C[C@H](O)CC"]) < 16

    # bare --relax relaxes with --energy (as before); XYZ carries energy and population on its comment line
    xyz = tmp_path / "window.xyz"
    assert run_cli("sample", "--checkpoint", tiny_torsional, "--smiles", "CCCCO", "-n", 8, "--nfe", 10, "--relax",
                   "--energy", "mmff", "--ewin", "0.05", "--tau", "0.05", "-o", xyz, "--no-progress") == 0
    assert "tau = 0.05 eV (--tau;" in capsys.readouterr().err
    rows = _csv_rows(tmp_path / "window.ensemble.csv")
    comments = [line for line in xyz.read_text().splitlines() if line.startswith("CCCCO_")]
    assert len(comments) == len(rows) and all("energy_eV=" in c and "population=" in c for c in comments)
    assert all(float(r["rel_energy_eV"]) <= 0.05 for r in rows)


def test_sample_without_checkpoint_uses_the_shipped_sampler(tiny_torsional, tmp_path, capsys, monkeypatch):
    import json
    import shutil

    from adjoint_sampling import pretrained

    shipped = tmp_path / "sampler"
    monkeypatch.setattr(pretrained, "SAMPLER_DIR", shipped)
    assert "expected " + str(shipped / "checkpoint.pt") in _error(
        capsys, "sample", "--smiles", "CCO", "-n", 2, "-o", tmp_path / "none.sdf")
    assert not (tmp_path / "none.sdf").exists()

    shipped.mkdir()
    shutil.copy(tiny_torsional, shipped / "checkpoint.pt")
    (shipped / "provenance.json").write_text(json.dumps({"preset": "tiny-torsional", "wall_time_s": 3, "commit": "abc"}))
    a, b = tmp_path / "a.xyz", tmp_path / "b.xyz"
    assert run_cli("sample", "--smiles", "CCCO", "-n", 3, "--nfe", 5, "-o", a, "--no-progress") == 0
    err = capsys.readouterr().err
    assert f"using the shipped sampler {shipped / 'checkpoint.pt'} (preset tiny-torsional, trained 0 min 3 s, " \
           "commit abc)" in err
    assert run_cli("sample", "--checkpoint", tiny_torsional, "--smiles", "CCCO", "-n", 3, "--nfe", 5, "-o", b,
                   "--no-progress") == 0
    assert "shipped" not in capsys.readouterr().err
    assert a.read_text() == b.read_text()  # the same sampler, the same seed: the same conformers


def test_benchmark_without_checkpoint_uses_the_shipped_sampler(tiny_torsional, tmp_path, capsys, monkeypatch):
    import shutil

    from adjoint_sampling import pretrained
    from benchmark.__main__ import main as bench_main
    from test_benchmark_run import _make_refs

    refs = _make_refs(tmp_path / "refs")
    argv = ["--method", "adjoint-sampling", "--references", str(refs), "--no-progress", "--threads", "1",
            "--limit", "1", "--sample-factor", "0.5"]
    monkeypatch.setattr(pretrained, "SAMPLER_DIR", tmp_path / "sampler")
    assert bench_main(argv + ["--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: method 'adjoint-sampling': no --checkpoint given") and \
        str(tmp_path / "sampler" / "checkpoint.pt") in err[0]
    assert not (tmp_path / "none").exists()

    (tmp_path / "sampler").mkdir()
    shutil.copy(tiny_torsional, tmp_path / "sampler" / "checkpoint.pt")
    assert bench_main(argv + ["--out", str(tmp_path / "bench")]) == 0
    captured = capsys.readouterr()
    assert f"using the shipped sampler {tmp_path / 'sampler' / 'checkpoint.pt'} (no provenance.json)" in captured.err
    assert "| adjoint-sampling | 1 |" in captured.out
