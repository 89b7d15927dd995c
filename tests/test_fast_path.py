"""The dense fast path of the EGNN (model.fast) computes the same function as the edge-list reference.

Tolerances: float64 agrees to 1e-10 relative (only summation order differs); float32 to 1e-4
relative on the controller output, the RAM loss and every parameter gradient of a training step
(summation order and the subtracted diagonal in the mean over neighbours move the last bits).
"""
import pytest
import torch

from adjoint_sampling.config import DEFAULT_ELEMENTS, load_config
from adjoint_sampling.controllers import EGNNController, build_controller
from adjoint_sampling.graphs import collate, graph_from_smiles, point_cloud_graph
from adjoint_sampling.loss import ram_loss
from adjoint_sampling.schedules import GeometricSchedule
from adjoint_sampling.spaces import remove_com

RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def _pair(dtype, max_output_norm=0.0):
    """A perturbed reference controller and a fast copy loaded from its state dict (a checkpoint)."""
    torch.manual_seed(0)
    plain = EGNNController(len(DEFAULT_ELEMENTS), hidden=32, layers=4, max_output_norm=max_output_norm).to(dtype)
    for p in plain.parameters():  # a non-trivial coordinate path (phi_x starts near zero)
        p.data += 0.05 * torch.randn_like(p)
    fast = EGNNController(len(DEFAULT_ELEMENTS), hidden=32, layers=4, max_output_norm=max_output_norm, fast=True)
    fast.to(dtype).load_state_dict(plain.state_dict())
    return plain, fast


def _batch(dtype):
    """Mixed sizes, repeated copies not adjacent, a single-atom-count group of one copy (methane, 5 atoms)."""
    mols = [graph_from_smiles(s) for s in ("CC(=O)O", "CCN", "C", "c1ccccc1O")]
    graphs = collate([mols[0], mols[1], mols[0], mols[2], mols[3], mols[1]], DEFAULT_ELEMENTS)
    gen = torch.Generator().manual_seed(1)
    x = remove_com(1.5 * torch.randn(graphs.num_atoms, 3, generator=gen, dtype=dtype), graphs.batch, graphs.num_graphs)
    return graphs, x


def _close(a, b, dtype):
    scale = b.abs().max().clamp_min(1e-12)
    return ((a - b).abs().max() / scale).item() <= RTOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_equals_reference_per_atom_times(dtype):
    plain, fast = _pair(dtype, max_output_norm=3.0)
    graphs, x = _batch(dtype)
    t = torch.rand(graphs.num_graphs, generator=torch.Generator().manual_seed(3)).to(dtype)[graphs.batch]
    v_ref = plain(t, x, graphs)
    assert v_ref.abs().max() > 1e-3  # not vacuous
    assert _close(fast(t, x, graphs), v_ref, dtype)
    with torch.no_grad():  # the SDE's path (in-place activations)
        assert _close(fast(t, x, graphs), v_ref, dtype)
    assert _close(fast(torch.tensor(0.3, dtype=dtype), x, graphs), plain(torch.tensor(0.3, dtype=dtype), x, graphs), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_training_step_loss_and_gradients_equal_reference(dtype):
    plain, fast = _pair(dtype)
    graphs, x1 = _batch(dtype)
    target = remove_com(torch.randn(x1.shape, generator=torch.Generator().manual_seed(4), dtype=dtype),
                        graphs.batch, graphs.num_graphs)
    schedule = GeometricSchedule()
    losses, grads = [], []
    for model in (plain, fast):
        loss = ram_loss(model, x1, target, graphs, schedule, torch.Generator().manual_seed(5))
        model.zero_grad()
        loss.backward()
        losses.append(loss.detach())
        grads.append({k: p.grad for k, p in model.named_parameters()})
    assert _close(losses[1], losses[0], dtype)
    for name, g_ref in grads[0].items():
        assert torch.isfinite(grads[1][name]).all(), name
        assert _close(grads[1][name], g_ref, dtype), name


def test_fast_path_is_equivariant():
    _, fast = _pair(torch.float64)
    graphs, x = _batch(torch.float64)
    t = torch.tensor(0.6, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64))
    assert torch.allclose(fast(t, x @ q.T, graphs), fast(t, x, graphs) @ q.T, atol=1e-9, rtol=0)


def test_config_switch_and_point_clouds():
    cfg = load_config("lj13", ["model.hidden=16", "model.layers=3", "model.max_output_norm=0"])
    assert cfg.model.fast  # the default
    torch.manual_seed(0)
    fast = build_controller(cfg.model).double()
    plain = build_controller(load_config("lj13", ["model.hidden=16", "model.layers=3", "model.max_output_norm=0",
                                                  "model.fast=false"]).model).double()
    assert fast.fast and not plain.fast
    plain.load_state_dict(fast.state_dict())
    for p in plain.parameters():
        p.data += 0.05 * torch.randn_like(p)
    fast.load_state_dict(plain.state_dict())
    graphs = collate([point_cloud_graph(13, name="lj13")] * 3, [0])
    x = remove_com(torch.randn(39, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64),
                   graphs.batch, graphs.num_graphs)
    t = torch.tensor(0.5, dtype=torch.float64)
    assert _close(fast(t, x, graphs), plain(t, x, graphs), torch.float64)
