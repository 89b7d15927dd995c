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
    """Monte Carlo mean/variance of X_t | X_1 against h_t²/h_1²·X_1 and h_t²α_t²/h_1², COM-free."""
    g = graph_from_smiles("O")  # 3 atoms
    k = 40000
    graphs = collate([g] * k, [1, 8])
    x1_one = torch.tensor([[0.5, -0.2, 0.1], [-0.3, 0.4, 0.0], [-0.2, -0.2, -0.1]], dtype=torch.float64)
    x1 = x1_one.repeat(k, 1)
    gen = torch.Generator().manual_seed(0)
    t, xt = sample_bridge(x1, graphs, s, gen)
    # condition on a narrow time window by sampling many and binning is noisy; instead fix t:
    tt = torch.full((k,), 0.37, dtype=torch.float64)
    coef, std = s.bridge_params(tt[:1])
    from adjoint_sampling.sde import com_free_noise

    noise = com_free_noise(x1.shape, graphs.batch, k, gen, torch.float64)
    samples = (coef * x1 + std * noise).reshape(k, 3, 3)
    h2t, h21 = s.h2(torch.tensor(0.37, dtype=torch.float64)), s.h2(torch.tensor(1.0, dtype=torch.float64))
    expect_mean = h2t / h21 * x1_one
    expect_var = h2t * (h21 - h2t) / h21
    assert torch.allclose(samples.mean(0), expect_mean, atol=5 * math.sqrt(expect_var / k) + 1e-12)
    # COM-free projection of isotropic noise on n=3 atoms leaves (n-1)/n of the variance per coordinate
    assert torch.allclose(samples.var(0), torch.full((3, 3), expect_var * 2 / 3, dtype=torch.float64), rtol=0.05)
    # and the sampled-t path is consistent with the closed form at each drawn t
    tr = t.reshape(k, 3)[:, 0]
    coef_t, _ = s.bridge_params(tr)
    resid = xt.reshape(k, 3, 3) - coef_t[:, None, None] * x1_one
    assert resid.sum(1).abs().max() < 1e-9  # COM-free


def test_bridge_endpoints():
    s = GeometricSchedule()
    coef, std = s.bridge_params(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(coef, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(std, torch.zeros(2, dtype=torch.float64), atol=1e-7)
