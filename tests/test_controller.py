"""The EGNN controller is E(3)-equivariant and COM-free; the SDE keeps samples COM-free."""
import torch

from adjoint_sampling.config import DEFAULT_ELEMENTS
from adjoint_sampling.controllers import EGNNController
from adjoint_sampling.graphs import collate, graph_from_smiles
from adjoint_sampling.schedules import GeometricSchedule, time_grid
from adjoint_sampling.sde import integrate


def _random_rotation(gen):
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _setup():
    torch.manual_seed(0)
    model = EGNNController(len(DEFAULT_ELEMENTS), hidden=32, layers=4).double()
    for p in model.parameters():  # make the coordinate path non-trivial
        p.data += 0.05 * torch.randn_like(p)
    graphs = collate([graph_from_smiles("CC(=O)O"), graph_from_smiles("CCN"), graph_from_smiles("CC(=O)O")], DEFAULT_ELEMENTS)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(graphs.num_atoms, 3, generator=gen, dtype=torch.float64)
    return model, graphs, x, gen


def test_equivariant_under_rotation_and_translation():
    model, graphs, x, gen = _setup()
    t = torch.tensor(0.3, dtype=torch.float64)
    v = model(t, x, graphs)
    assert v.abs().max() > 1e-4  # not trivially zero
    for _ in range(3):
        rot = _random_rotation(gen)
        shift = torch.randn(graphs.num_graphs, 3, generator=gen, dtype=torch.float64)[graphs.batch]
        v_moved = model(t, x @ rot.T + shift, graphs)
        assert torch.allclose(v_moved, v @ rot.T, atol=1e-5, rtol=0)


def test_reflection_and_com_free():
    model, graphs, x, _ = _setup()
    t = torch.tensor(0.7, dtype=torch.float64)
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(model(t, x @ mirror, graphs), model(t, x, graphs) @ mirror, atol=1e-5)
    v = model(t, x, graphs)
    for part in graphs.split(v):
        assert part.sum(0).abs().max() < 1e-10


def test_permutation_of_molecule_copies():
    """Copies of the same molecule at the same positions get the same output wherever they sit in the batch."""
    model, graphs, x, _ = _setup()
    parts = graphs.split(x)
    x = torch.cat([parts[0], parts[1], parts[0]])
    v = graphs.split(model(torch.tensor(0.5, dtype=torch.float64), x, graphs))
    assert torch.allclose(v[0], v[2], atol=1e-12)


def test_sde_samples_are_com_free_and_base_has_right_variance():
    s = GeometricSchedule()
    g = graph_from_smiles("C")  # 5 atoms
    k = 2000
    graphs = collate([g] * k, DEFAULT_ELEMENTS)
    x1, cost = integrate(None, graphs, s, time_grid("uniform", 50), generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)
    per = x1.reshape(k, 5, 3)
    assert per.sum(1).abs().max() < 1e-9
    assert torch.all(cost == 0)
    # exact base increments: var = h(1)^2 (n-1)/n even on a coarse grid
    assert abs(per.var(0).mean().item() - s.h1_sq * 4 / 5) < 0.05
