"""Warm start by bridge matching: the loss's minimiser is the bridge drift toward the data, the SDE
driven by that drift ends in the data's law (Cartesian and on the torus), and the trainer runs the
ETKDG phase before Adjoint Sampling, logs both phases and resumes across them."""
import csv
import math

import pytest
import torch

from adjoint_sampling.config import DEFAULT_ELEMENTS
from adjoint_sampling.graphs import collate, graph_from_smiles, with_torsions
from adjoint_sampling.loss import bridge_matching_loss
from adjoint_sampling.schedules import GeometricSchedule, time_grid
from adjoint_sampling.sde import integrate
from adjoint_sampling.spaces import CartesianSpace, TorsionSpace, wrap_angle

SCHEDULE = GeometricSchedule(0.0314159, 3.14159)
CENTRES = (2.8, -2.8)  # two points on the circle, 0.68 rad apart across the wrap at ±π
WEIGHTS = (0.3, 0.7)
IMAGES = range(-3, 4)


class TorusOracle:
    """The exact bridge-matching minimiser E[(X_1 − X_t)/α(t)² | wrapped X_t = x] for a per-torsion
    two-point target on the circle: a posterior over the point j, its image k and x's own image m."""

    def __init__(self, images=IMAGES):
        self.images = images

    def __call__(self, t, x, graphs):
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0]).unsqueeze(-1)
        h2, a2 = SCHEDULE.h2(t), SCHEDULE.alpha2(t)
        coef, var = h2 / SCHEDULE.h1_sq, (h2 * a2 / SCHEDULE.h1_sq).clamp_min(1e-300)
        logw, delta = [], []
        for c, p in zip(CENTRES, WEIGHTS):
            for k in self.images:
                end = c + 2 * math.pi * k
                for m in self.images:
                    xt = x.double() + 2 * math.pi * m
                    logw.append(math.log(p) - 0.5 * end ** 2 / SCHEDULE.h1_sq - 0.5 * (xt - coef * end) ** 2 / var)
                    delta.append(end - xt)
        w = torch.softmax(torch.cat(logw, -1), -1)
        return ((w * torch.cat(delta, -1)).sum(-1, keepdim=True) / a2.clamp_min(1e-12)).to(x.dtype)


def _torsion_graphs(copies):
    g = with_torsions(graph_from_smiles("CCO"))
    return collate([g] * copies, DEFAULT_ELEMENTS)


def _targets(rows, seed):
    pick = torch.rand(rows, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) < WEIGHTS[0]
    return torch.where(pick, CENTRES[0], CENTRES[1])


def test_sde_driven_by_the_bridge_matching_minimiser_ends_in_the_target_law_on_the_torus():
    graphs = _torsion_graphs(1500)
    grid = time_grid("uniform", 200, schedule=SCHEDULE)
    path = integrate(TorusOracle(), graphs, SCHEDULE, grid, generator=torch.Generator().manual_seed(0),
                     dtype=torch.float64, space=TorsionSpace())
    theta = path.x1.reshape(-1)
    near_first = wrap_angle(theta - CENTRES[0]).abs() < 0.15
    near_second = wrap_angle(theta - CENTRES[1]).abs() < 0.15
    assert float((near_first | near_second).double().mean()) > 0.98  # no mass left between or elsewhere
    assert float(near_first.double().mean()) == pytest.approx(WEIGHTS[0], abs=0.03)


def test_bridge_matching_loss_is_minimised_by_the_bridge_drift_on_the_torus():
    graphs = _torsion_graphs(3000)
    x1 = _targets(graphs.torsion.count, 1)
    oracle = TorusOracle()

    def loss(controller):
        return float(bridge_matching_loss(controller, x1, graphs, SCHEDULE, torch.Generator().manual_seed(2),
                                          space=TorsionSpace()))

    # the same draws (t, X_t, image) for every candidate: differences are the excess over the
    # irreducible part, which dominates the α²-weighted loss
    best = loss(oracle)
    for scale in (0.8, 1.25):
        assert loss(lambda t, x, g: scale * oracle(t, x, g)) > best
    assert loss(lambda t, x, g: oracle(t, x, g) + 0.3) > best
    # the same posterior without the images (as if the torus were an interval) is worse
    assert loss(TorusOracle(images=range(1))) > best


def test_bridge_matching_loss_vanishes_for_the_exact_drift_to_a_single_cartesian_point():
    """One terminal point per copy: the bridge's own drift (X_1 − X_t)/α² makes the residual exactly zero,
    and the SDE it drives ends at that point."""
    g = graph_from_smiles("CO")
    graphs = collate([g] * 8, DEFAULT_ELEMENTS)
    space = CartesianSpace(3)
    x1 = space.wrap(torch.randn(graphs.num_atoms, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
                    graphs)

    def exact(t, x, _):
        a2 = SCHEDULE.alpha2(torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])).unsqueeze(-1)
        return (x1 - x) / a2.clamp_min(1e-300)

    loss = bridge_matching_loss(exact, x1, graphs, SCHEDULE, torch.Generator().manual_seed(4), space=space)
    assert float(loss) < 1e-20
    assert float(bridge_matching_loss(lambda t, x, gr: 0.9 * exact(t, x, gr), x1, graphs, SCHEDULE,
                                      torch.Generator().manual_seed(4), space=space)) > 1e-3
    grid = time_grid("uniform", 100, schedule=SCHEDULE)
    end = integrate(exact, graphs, SCHEDULE, grid, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    # exact up to the last step's own noise (std √Δh² ≈ 0.01 Å on this grid)
    assert torch.allclose(end.x1, x1, atol=0.06)


def _run(tmp_path, *extra):
    from adjoint_sampling.cli import main

    return main(["train", "--preset", "tiny-torsional", "--run-dir", str(tmp_path / "run"), "--no-progress",
                 "sde.train_nfe=4", "sde.eval_nfe=4", "sample.n=0", *extra])


def _log(tmp_path):
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_trainer_warm_starts_on_etkdg_then_runs_adjoint_sampling_and_resumes_across_phases(tmp_path):
    from adjoint_sampling.checkpoint import load_checkpoint
    from adjoint_sampling.trainer import CHECKPOINT_NAME

    assert _run(tmp_path, "train.pretrain_epochs=3", "train.epochs=2", "train.checkpoint_every=1") == 0
    rows = _log(tmp_path)
    assert [r["phase"] for r in rows] == ["pretrain"] * 3 + ["as"] * 2
    assert all(r["energy_s"] in ("0", "0.0") for r in rows[:3])  # the warm start calls no energy
    assert rows[3]["buffer"] == rows[0]["buffer"]  # Adjoint Sampling starts from an emptied buffer
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert state["as_start_epoch"] == 3 and state["epoch"] == 5
    assert bool(torch.isfinite(state["buffers"][0]["energy"]).all())

    # stop inside the warm start, resume: the phase goes on where it stopped
    other = tmp_path / "b"
    other.mkdir()
    assert _run(other, "train.pretrain_epochs=4", "train.epochs=2", "train.checkpoint_every=1",
                "train.max_cpu_minutes=0.0001") == 0
    assert load_checkpoint(other / "run" / CHECKPOINT_NAME)["as_start_epoch"] is None
    from adjoint_sampling.cli import main

    assert main(["train", "--resume", str(other / "run"), "--no-progress", "train.max_cpu_minutes=0"]) == 0
    phases = [r["phase"] for r in _log(other)]
    assert phases == ["pretrain"] * 4 + ["as"] * 2


def test_init_from_starts_adjoint_sampling_from_a_pretrained_model_and_refuses_a_foreign_one(tmp_path, capsys):
    from adjoint_sampling.checkpoint import load_checkpoint
    from adjoint_sampling.cli import main
    from adjoint_sampling.trainer import CHECKPOINT_NAME, PRETRAINED_NAME

    assert _run(tmp_path, "train.pretrain_epochs=2", "train.epochs=1") == 0
    pretrained = tmp_path / "run" / PRETRAINED_NAME
    warm = load_checkpoint(pretrained)
    assert warm["as_start_epoch"] is None and warm["epoch"] == 2
    new = tmp_path / "new"
    assert main(["train", "--preset", "tiny-torsional", "--run-dir", str(new), "--no-progress", "sde.train_nfe=4",
                 "sde.eval_nfe=4", "sample.n=0", "train.epochs=1", "train.lr=1e-12",
                 "--init-from", str(pretrained)]) == 0
    state = load_checkpoint(new / CHECKPOINT_NAME)
    assert state["as_start_epoch"] == 0 and state["epoch"] == 1
    for key, value in warm["model"].items():  # steps of 1e-12: the model is still the pretrained one
        assert torch.allclose(state["model"][key], value, atol=1e-9)
    fresh = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["model"]  # (and training does change it)
    assert any(not torch.allclose(fresh[k], v, atol=1e-6) for k, v in warm["model"].items())
    capsys.readouterr()
    assert main(["train", "--preset", "tiny", "--run-dir", str(tmp_path / "cart"), "--no-progress",
                 "--init-from", str(pretrained)]) == 2
    assert "torsional model" in capsys.readouterr().err
    assert not (tmp_path / "cart").exists()


def test_cartesian_warm_start_stores_centred_etkdg_conformers(tmp_path):
    """Cartesian mode: the warm-start buffer holds ETKDG geometries (bond lengths of a real molecule),
    centred, with no energies."""
    from adjoint_sampling.checkpoint import load_checkpoint
    from adjoint_sampling.cli import main
    from adjoint_sampling.trainer import PRETRAINED_NAME

    run = tmp_path / "cart"
    assert main(["train", "--preset", "tiny", "--run-dir", str(run), "--no-progress", "sample.n=0",
                 "train.pretrain_epochs=2", "train.epochs=1"]) == 0
    buf = load_checkpoint(run / PRETRAINED_NAME)["buffers"][0]
    assert bool(torch.isnan(buf["energy"]).all()) and float(buf["grad_energy"].abs().max()) == 0.0
    g = graph_from_smiles(buf["keys"][0])
    x = torch.split(buf["x1"], buf["sizes"].tolist())[0].double()
    assert x.shape == (g.num_atoms, 3) and float(x.mean(0).abs().max()) < 1e-5
    i, j = g.bonds
    lengths = (x[i] - x[j]).norm(dim=-1)
    assert 0.9 < float(lengths.min()) and float(lengths.max()) < 1.6  # C–H ≈ 1.09 Å … C–C/C–O ≈ 1.4–1.55 Å
