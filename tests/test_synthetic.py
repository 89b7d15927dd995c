"""Synthetic benchmarks: DW-4 / LJ-13 energies and forces, W2 metrics, and a short DW-4 training run."""
from pathlib import Path

import numpy as np
import pytest
import torch

from adjoint_sampling.synthetic import SYSTEMS, draw_samples, energies_of, load_split, make_trainer
from benchmark.synthetic import coordinate_w2, interatomic_distances, sample_metrics, w2_1d
from energies.base import EnergyBatch
from energies.config import EnergyConfig
from energies.registry import make_energy
from energies.synthetic import SyntheticEnergyError, double_well_energy, lennard_jones_energy


def _batch(x: torch.Tensor) -> EnergyBatch:
    b, n, d = x.shape
    return EnergyBatch(numbers=torch.zeros(b * n, dtype=torch.long), positions=x.reshape(-1, d).double(),
                       batch=torch.arange(b).repeat_interleave(n), charges=torch.zeros(b, dtype=torch.long))


def _random_system(name: str, b: int = 3, seed: int = 0) -> torch.Tensor:
    s = SYSTEMS[name]
    g = torch.Generator().manual_seed(seed)
    if name == "lj13":  # a jittered cubic lattice keeps LJ pairs away from the r -> 0 wall
        grid = torch.stack(torch.meshgrid(*[torch.arange(3.0)] * 3, indexing="ij"), -1).reshape(-1, 3)[:13] * 1.1
        return grid + 0.1 * torch.randn(b, 13, 3, generator=g, dtype=torch.float64)
    return 3.0 * torch.randn(b, s.n_particles, s.dim, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_forces_match_finite_differences(name):
    model = make_energy(EnergyConfig(name=name))
    x = _random_system(name)
    res = model(_batch(x))
    forces = res.forces.reshape(x.shape)
    h = 1e-6
    for idx in [(0, 0, 0), (1, 2, 1), (2, 3, 0)]:
        xp, xm = x.clone(), x.clone()
        xp[idx] += h
        xm[idx] -= h
        fd = (model(_batch(xp)).energy[idx[0]] - model(_batch(xm)).energy[idx[0]]) / (2 * h)
        assert forces[idx].item() == pytest.approx(-fd.item(), rel=1e-5, abs=1e-6)


def test_energy_values_by_hand():
    # two DW particles at distance d: b(d-d0)^2 + c(d-d0)^4 (one pair, i<j)
    x = torch.tensor([[[0.0, 0.0], [5.0, 0.0]]], dtype=torch.float64)
    assert double_well_energy(x).item() == pytest.approx(-4 * 1 + 0.9 * 1)
    # two LJ particles at r_m: minimum -ε per unordered pair, counted twice (ordered pairs)
    y = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]], dtype=torch.float64)
    tether = 0.5 * 2 * 0.5**2
    assert lennard_jones_energy(y).item() == pytest.approx(-2.0 + tether)
    assert lennard_jones_energy(y, pair_factor=1.0).item() == pytest.approx(-1.0 + tether)


def test_energy_is_translation_and_rotation_invariant():
    model = make_energy(EnergyConfig(name="lj13"))
    x = _random_system("lj13")
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    moved = x @ q.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert torch.allclose(model(_batch(x)).energy, model(_batch(moved)).energy, atol=1e-8)


def test_atom_order_of_batch_is_respected():
    model = make_energy(EnergyConfig(name="dw4"))
    x = _random_system("dw4", b=2)
    batch = _batch(x)
    perm = torch.tensor([4, 0, 5, 1, 6, 2, 7, 3])  # interleave the two systems
    shuffled = EnergyBatch(numbers=batch.numbers, positions=batch.positions[perm], batch=batch.batch[perm],
                           charges=batch.charges)
    res = model(shuffled)
    assert torch.allclose(res.energy, model(batch).energy)
    assert torch.allclose(res.forces, model(batch).forces[perm])


def test_wrong_particle_count_or_option_is_a_clear_error():
    model = make_energy(EnergyConfig(name="dw4"))
    with pytest.raises(SyntheticEnergyError, match="4 particles"):
        model(_batch(torch.zeros(1, 5, 2, dtype=torch.float64)))
    with pytest.raises(SyntheticEnergyError, match="shape"):
        model(_batch(torch.zeros(1, 4, 3, dtype=torch.float64)))
    with pytest.raises(SyntheticEnergyError, match="pair convention"):
        make_energy(EnergyConfig(name="lj13", options={"pairs": "both"}))


def test_w2_1d_of_shifted_sets_is_the_shift():
    a = np.random.default_rng(0).normal(size=500)
    assert w2_1d(a, a + 0.7) == pytest.approx(0.7)
    assert w2_1d(a, np.random.default_rng(1).permutation(a)) == pytest.approx(0.0)
    # unequal sizes: a set against itself repeated twice is still at distance ~0
    assert w2_1d(a, np.concatenate([a, a])) == pytest.approx(0.0, abs=1e-9)


def test_coordinate_w2_is_com_free_and_exact():
    rng = np.random.default_rng(0)
    s = SYSTEMS["dw4"]
    a = rng.normal(size=(50, s.n_coords))
    shifted = a + np.tile([3.0, -1.0], s.n_particles)  # rigid translation of every sample
    assert coordinate_w2(a, shifted, s) == pytest.approx(0.0, abs=1e-9)
    perm = rng.permutation(50)
    assert coordinate_w2(a, a[perm], s) == pytest.approx(0.0, abs=1e-9)
    # moving particle 0 by +δ and 1 by -δ along x (COM unchanged) moves every sample by δ·sqrt(2)
    moved = a.copy()
    moved[:, 0] += 0.5
    moved[:, 2] -= 0.5
    assert coordinate_w2(a, moved, s) <= 0.5 * np.sqrt(2) + 1e-9


def test_coordinate_w2_by_hand():
    """Three squares of side 2, 20, 40 (far apart, so the optimal assignment is plain to see), against
    the same squares in another order, translated, and with two COM-free-computable displacements."""
    s = SYSTEMS["dw4"]
    square = np.array([1, 1, -1, 1, -1, -1, 1, -1], dtype=float)  # centred: COM at 0
    x1, x2, x3 = square, 10 * square, 20 * square
    d1 = np.zeros(8)
    d1[0], d1[2] = 0.5, -0.5  # particles 0 and 1 by ±0.5 along x: COM-free, squared length 2·0.5² = 0.5
    d2 = np.zeros(8)
    d2[5] = 1.0  # particle 2 by 1 along y: COM-free part is (3/4, -1/4, -1/4, -1/4), squared length 3/4
    a = np.stack([x1, x2, x3])
    b = np.stack([x3 + np.tile([5.0, -2.0], 4), x1 + d1, x2 + d2])
    # optimal plan x1->x1+d1, x2->x2+d2, x3->x3+shift: W2² = (0.5 + 0.75 + 0) / 3
    assert coordinate_w2(a, b, s) == pytest.approx(np.sqrt(1.25 / 3), rel=1e-12)


def test_interatomic_distances_by_hand():
    s = SYSTEMS["dw4"]
    square = np.array([[0, 0, 1, 0, 1, 1, 0, 1]], dtype=float)
    assert np.sort(interatomic_distances(square, s)) == pytest.approx([1, 1, 1, 1, np.sqrt(2), np.sqrt(2)])


@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_ground_truth_obeys_the_virial_identity(name, synthetic_dir):
    """Boltzmann at τ=1 implies E[x·∇E] = d(n-1): the chosen pair convention must fit the data."""
    s = SYSTEMS[name]
    x = torch.as_tensor(load_split(name, "val", synthetic_dir)[:4000].reshape(-1, s.n_particles, s.dim), dtype=torch.float64)
    x = x - x.mean(1, keepdim=True)
    model = make_energy(EnergyConfig(name=name))
    _, forces = model.energy_and_forces(x)
    virial = float((-forces * x).sum((1, 2)).mean())
    dof = s.dim * (s.n_particles - 1)
    assert virial == pytest.approx(dof, rel=0.15)


@pytest.mark.parametrize("energy_gradient", [False, True])
def test_short_dw4_training_beats_the_untrained_sampler(tmp_path, energy_gradient, synthetic_dir):
    from adjoint_sampling.config import load_config

    torch.set_num_threads(1)
    cfg = load_config("dw4", ["train.epochs=6", "train.grad_steps=20", "sde.train_nfe=80", "sde.eval_nfe=80",
                              "train.checkpoint_every=100", f"model.energy_gradient={str(energy_gradient).lower()}"])
    reference = load_split("dw4", "test", synthetic_dir)[:500]
    base = draw_samples(cfg, "dw4", 500, None, seed=3)
    trainer = make_trainer(cfg, "dw4", tmp_path)
    trainer.fit()
    trained = draw_samples(cfg, "dw4", 500, trainer.model, seed=3)
    w_base = sample_metrics(base, reference, "dw4")["energy_w2"]
    w_trained = sample_metrics(trained, reference, "dw4")["energy_w2"]
    assert np.isfinite(energies_of(trained, "dw4")).all()
    assert w_trained < 0.05 * w_base, (w_trained, w_base)


def test_histogram_plot_is_written(tmp_path):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 8)) * 2
    out = tmp_path / "h.png"
    from benchmark.synthetic import plot_histograms

    plot_histograms(out, "dw4", ref, {"other": ref * 3})
    assert out.stat().st_size > 1000


def _fake_ground_truth(folder: Path, rows: int = 50) -> Path:
    """Val/test splits of the DW-4 layout (random rows): enough for the CLI, not for science."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for split in ("train", "val", "test"):
        np.save(folder / f"{split}_split_DW4.npy", (2.0 * rng.normal(size=(rows, 8))).astype(np.float32))
    return folder


@pytest.mark.parametrize("procs", [1, 2])
def test_eval_synthetic_command_end_to_end(tmp_path, capsys, procs):
    import json

    from adjoint_sampling.cli import main
    from adjoint_sampling.checkpoint import load_checkpoint

    data = _fake_ground_truth(tmp_path / "gt")
    out = tmp_path / "run"
    rc = main(["eval-synthetic", "--system", "dw4", "--data", str(data), "--out", str(out), "--n-samples", "20",
               "--no-plot", "--procs", str(procs), "train.epochs=2", "train.grad_steps=2", "train.samples_per_epoch=8",
               "train.batch_size=8", "sde.train_nfe=10", "sde.eval_nfe=10"])
    assert rc == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["epochs"] == 2 and set(summary["metrics"]) == {"sampler", "untrained", "floor(val)"}
    assert np.load(out / "samples.npy").shape == (20, 8)
    # under DDP the checkpoint holds every rank's replay buffer, each with its share of the samples
    buffers = load_checkpoint(out / "checkpoint.pt")["buffers"]
    assert len(buffers) == procs
    assert "energy_w2" in capsys.readouterr().out


def test_eval_synthetic_importance_adds_a_reweighted_column(tmp_path, capsys):
    import json

    from adjoint_sampling.cli import main
    from adjoint_sampling.synthetic import draw_weighted_samples

    data = _fake_ground_truth(tmp_path / "gt")
    out = tmp_path / "run"
    tiny = ["train.epochs=1", "train.grad_steps=2", "train.samples_per_epoch=8", "train.batch_size=8",
            "sde.train_nfe=10", "sde.eval_nfe=10"]
    rc = main(["eval-synthetic", "--system", "dw4", "--data", str(data), "--out", str(out), "--n-samples", "20",
               "--no-plot", "--importance", "3", *tiny])
    assert rc == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert list(summary["metrics"]) == ["sampler", "sampler+IS", "untrained", "floor(val)"]
    imp = summary["importance"]
    assert imp["candidates"] == 60 and 1 <= imp["ess"] <= 60 and 1 <= imp["unique"] <= 20
    log_w = np.load(out / "candidate_log_weights.npy")
    reweighted = np.load(out / "samples_reweighted.npy")
    assert log_w.shape == (60,) and reweighted.shape == (20, 8)
    # the plain sampler's samples are the first candidates: same seed, same paths as draw_samples
    from adjoint_sampling.checkpoint import load_checkpoint
    from adjoint_sampling.config import load_config

    cfg = load_config("dw4", tiny)
    trainer = make_trainer(cfg, "dw4", tmp_path / "again")
    trainer.load_state_dict(load_checkpoint(out / "checkpoint.pt"))
    samples = np.load(out / "samples.npy")
    np.testing.assert_array_equal(samples, draw_samples(cfg, "dw4", 20, trainer.model, seed=0))
    first, lw_first = draw_weighted_samples(cfg, "dw4", 20, trainer.model, seed=0)
    rest, lw_rest = draw_weighted_samples(cfg, "dw4", 40, trainer.model, seed=1)
    np.testing.assert_array_equal(first, samples)
    np.testing.assert_allclose(np.concatenate([lw_first, lw_rest]), log_w)
    cand = np.concatenate([first, rest])
    # every reweighted row is one of the candidates
    assert all((np.abs(cand - row).max(axis=1) == 0).any() for row in reweighted)
    assert "sampler+IS" in capsys.readouterr().out
    assert main(["eval-synthetic", "--data", str(data), "--out", str(out), "--importance", "1"]) == 2
    assert "--importance" in capsys.readouterr().err


def test_eval_synthetic_bad_input_is_one_line_error(tmp_path, capsys):
    from adjoint_sampling.cli import main

    assert main(["eval-synthetic", "--system", "dw4", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "ground-truth file not found" in capsys.readouterr().err
    data = _fake_ground_truth(tmp_path / "gt")
    assert main(["eval-synthetic", "--data", str(data), "--out", str(tmp_path / "o"), "--procs", "0"]) == 2
    assert "--procs" in capsys.readouterr().err
    assert main(["eval-synthetic", "--data", str(data), "--out", str(tmp_path / "o"), "--procs", "2",
                 "--exact-buffer", "10"]) == 2
    assert "--exact-buffer" in capsys.readouterr().err


def test_lr_decay_follows_the_wall_clock_when_time_limited(tmp_path):
    import time

    from adjoint_sampling.config import load_config

    cfg = load_config("dw4", ["train.epochs=1000", "train.max_minutes=10", "train.lr=0.002"])
    trainer = make_trainer(cfg, "dw4", tmp_path, lr_final_frac=0.1)
    assert trainer.current_lr() == pytest.approx(0.002)  # before fit: epoch 0, no clock
    trainer.epoch = 10
    trainer._fit_start = time.time() - 300  # half the time budget gone after 1 % of the epochs
    assert trainer.progress() == pytest.approx(0.5, abs=0.01)
    assert trainer.current_lr() == pytest.approx(0.002 * (0.1 + 0.9 * 0.5), rel=0.02)
    trainer._fit_start = time.time() - 3600  # past the budget: the final rate
    assert trainer.current_lr() == pytest.approx(0.0002)


def test_single_system_batches_are_built_once_and_match_collate(tmp_path):
    from adjoint_sampling.config import load_config
    from adjoint_sampling.graphs import collate

    cfg = load_config("dw4", ["train.epochs=1"])
    trainer = make_trainer(cfg, "dw4", tmp_path)
    first = trainer.batch_of([0] * 5)
    assert trainer.batch_of([0] * 5) is first  # cached per batch size
    assert trainer.batch_of([0] * 3).num_graphs == 3
    fresh = collate([trainer.molecules[0]] * 5, trainer.elements)
    for name in ("numbers", "node_type", "batch", "edge_index", "bonded", "charges", "spins"):
        assert torch.equal(getattr(first, name), getattr(fresh, name)), name


def test_exact_buffer_holds_the_given_samples_and_is_never_resimulated(tmp_path, capsys):
    """--exact-buffer: the buffer is the COM-free ground truth with its energies; epochs add nothing."""
    import json

    from adjoint_sampling.checkpoint import load_checkpoint
    from adjoint_sampling.cli import main

    data = _fake_ground_truth(tmp_path / "gt", rows=30)
    out = tmp_path / "run"
    rc = main(["eval-synthetic", "--system", "dw4", "--data", str(data), "--out", str(out), "--n-samples", "10",
               "--no-plot", "--exact-buffer", "25", "train.epochs=3", "train.grad_steps=2", "train.batch_size=8",
               "sde.eval_nfe=10"])
    assert rc == 0
    assert "exact buffer of 25 ground-truth samples (train split)" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["exact_buffer"] == 25
    buf = load_checkpoint(out / "checkpoint.pt")["buffers"][0]
    truth = np.load(data / "train_split_DW4.npy")[:25].reshape(25, 4, 2)
    truth = truth - truth.mean(1, keepdims=True)
    assert np.allclose(buf["x1"].numpy().reshape(25, 4, 2), truth, atol=1e-5)
    assert np.allclose(buf["energy"].numpy(), energies_of(truth.reshape(25, 8), "dw4"), rtol=1e-5, atol=1e-4)
    log = (out / "metrics.csv").read_text().splitlines()
    assert len(log) == 4 and all(row.split(",")[4] == "0" for row in log[1:])  # n_samples: nothing simulated


def test_posterior_targets_train_one_system_and_refuse_several(tmp_path):
    from adjoint_sampling.config import load_config

    cfg = load_config("dw4", ["train.epochs=2", "train.grad_steps=5", "train.batch_size=16",
                              "train.samples_per_epoch=32", "sde.train_nfe=20", "loss.posterior_targets=true"])
    trainer = make_trainer(cfg, "dw4", tmp_path, log=lambda *_: None)
    trainer.fit()
    bank_x1, bank_a = trainer.posterior_bank()
    assert bank_x1.shape == bank_a.shape == (len(trainer.buffer), 4, 2)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(np.isfinite(float(r.split(",")[2])) for r in rows)
    trainer.molecules = trainer.molecules * 2
    with pytest.raises(ValueError, match="single-system"):
        trainer.train_steps()


def test_energy_gradient_checkpoint_rescores_identically(tmp_path):
    """A gradient-informed sampler reloaded from its checkpoint (energy re-attached) draws the same samples."""
    from adjoint_sampling.config import load_config
    from adjoint_sampling.controllers import GradientInformedController

    cfg = load_config("dw4", ["train.epochs=2", "train.grad_steps=5", "train.batch_size=16", "sde.train_nfe=20",
                              "sde.eval_nfe=20", "train.samples_per_epoch=16", "model.energy_gradient=true"])
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    trainer = make_trainer(cfg, "dw4", tmp_path / "a", log=lambda *_: None)
    trainer.fit()
    assert isinstance(trainer.model, GradientInformedController)
    assert trainer.model.beta[-1].weight.abs().sum() > 0  # beta(t) was trained away from its zero start
    fresh = make_trainer(cfg, "dw4", tmp_path / "b", log=lambda *_: None)
    fresh.load_state_dict(torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True))
    first = draw_samples(cfg, "dw4", 64, trainer.model, seed=5)
    again = draw_samples(cfg, "dw4", 64, fresh.model, seed=5)
    assert np.isfinite(first).all() and np.array_equal(first, again)
