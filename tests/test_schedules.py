"""g/h/α identities, time grids, and the bridge posterior against its closed form."""
import math

import pytest
import torch

from adjoint_sampling.graphs import collate, graph_from_smiles
from adjoint_sampling.loss import sample_bridge
from adjoint_sampling.schedules import GeometricSchedule, LinearSchedule, time_grid

SCHEDULES = [GeometricSchedule(1e-3, 1.0), GeometricSchedule(1e-2, 2.0), LinearSchedule(0.7)]


@pytest.mark.parametrize("s", SCHEDULES)
def test_h2_is_integral_of_g2(s):
    t = torch.linspace(0, 1, 20001, dtype=torch.float64)
    g2 = s.g(t) ** 2
    integral = torch.cumulative_trapezoid(g2, t)
    assert torch.allclose(integral, s.h2(t)[1:], rtol=1e-5, atol=1e-9)
    assert torch.allclose(s.alpha2(t), s.h2(torch.ones_like(t)) - s.h2(t), atol=1e-12)
    assert s.h2(torch.tensor(0.0, dtype=torch.float64)) == 0


def test_geometric_closed_forms():
    s = GeometricSchedule(1e-3, 1.0)
    r = 1e3
    t = torch.tensor([0.0, 0.3, 0.9, 1.0], dtype=torch.float64)
    assert torch.allclose(s.g(t), 1e-3 * r ** (1 - t) * math.sqrt(2 * math.log(r)))
    assert torch.allclose(s.h(t), torch.sqrt(1 - r ** (-2 * t)))
    assert torch.allclose(s.alpha(t), torch.sqrt(r ** (-2 * t) - r**-2))


@pytest.mark.parametrize("kind", ["uniform", "quadratic-linear"])
def test_time_grid_monotone_from_0_to_1(kind):
    g = time_grid(kind, 37)
    assert len(g) == 38 and g[0] == 0 and g[-1] == 1
    assert (g.diff() > 0).all()
    if kind == "quadratic-linear":  # refined toward t = 1
        assert g.diff()[-1] < g.diff()[0] / 5


@pytest.mark.parametrize("s", SCHEDULES)
def test_bridge_posterior_matches_closed_form(s):
    """sample_bridge's own X_t | X_1 at a fixed t against h_t²/h_1²·X_1 and h_t²α_t²/h_1², COM-free."""
    g = graph_from_smiles("O")  # 3 atoms
    k = 40000
    graphs = collate([g] * k, [1, 8])
    x1_one = torch.tensor([[0.5, -0.2, 0.1], [-0.3, 0.4, 0.0], [-0.2, -0.2, -0.1]], dtype=torch.float64)
    x1 = x1_one.repeat(k, 1)
    t, xt = sample_bridge(x1, graphs, s, torch.Generator().manual_seed(0), t_min=0.37, t_max=0.37)
    assert torch.allclose(t, torch.full_like(t, 0.37))
    samples = xt.reshape(k, 3, 3)
    h2t, h21 = s.h2(torch.tensor(0.37, dtype=torch.float64)), s.h2(torch.tensor(1.0, dtype=torch.float64))
    expect_mean = h2t / h21 * x1_one
    expect_var = h2t * (h21 - h2t) / h21
    assert torch.allclose(samples.mean(0), expect_mean, atol=5 * math.sqrt(expect_var / k) + 1e-12)
    # COM-free projection of isotropic noise on n=3 atoms leaves (n-1)/n of the variance per coordinate
    assert torch.allclose(samples.var(0), torch.full((3, 3), expect_var * 2 / 3, dtype=torch.float64), rtol=0.05)
    assert samples.sum(1).abs().max() < 1e-9  # COM-free
    # with t drawn per copy, every copy is centred on its own closed-form mean
    t, xt = sample_bridge(x1, graphs, s, torch.Generator().manual_seed(1))
    tr = t.reshape(k, 3)[:, 0]
    assert tr.min() < 0.05 and tr.max() > 0.95
    coef_t, std_t = s.bridge_params(tr)
    z = (xt.reshape(k, 3, 3) - coef_t[:, None, None] * x1_one) / std_t.clamp_min(1e-12)[:, None, None]
    assert abs(float(z.mean())) < 0.02 and abs(float(z.var()) - 2 / 3) < 0.03


def test_variance_grid_and_times_follow_the_noise():
    """The 'variance' grid has equal Δh² steps; 'variance' loss times have h²(t) uniform."""
    s = GeometricSchedule(math.pi / 100, math.pi)
    grid = time_grid("variance", 20, schedule=s)
    assert grid[0] == 0 and grid[-1] == 1 and (grid.diff() > 0).all()
    dh2 = s.h2(grid).diff()
    assert torch.allclose(dh2, torch.full_like(dh2, s.h1_sq / 20), rtol=1e-6)
    with pytest.raises(ValueError, match="schedule"):
        time_grid("variance", 20)
    g = graph_from_smiles("O")
    graphs = collate([g] * 20000, [1, 8])
    x1 = torch.zeros(graphs.num_atoms, 3, dtype=torch.float64)
    t, _ = sample_bridge(x1, graphs, s, torch.Generator().manual_seed(0), times="variance")
    levels = s.h2(t.reshape(-1, 3)[:, 0]) / s.h1_sq  # uniform on [0, 1]
    assert abs(float(levels.mean()) - 0.5) < 0.01 and abs(float((levels < 0.25).double().mean()) - 0.25) < 0.01


def test_bridge_endpoints():
    s = GeometricSchedule()
    coef, std = s.bridge_params(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(coef, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(std, torch.zeros(2, dtype=torch.float64), atol=1e-7)
