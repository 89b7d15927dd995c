"""Replay buffer FIFO + save/load, regularizer gradient, adjoint target, atomic checkpoints, SOC pieces."""
import io
import math
import os

import pytest
import torch

from adjoint_sampling.buffer import BufferEntry, ReplayBuffer
from adjoint_sampling.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from adjoint_sampling.config import DEFAULT_ELEMENTS
from adjoint_sampling.graphs import collate, graph_from_smiles
from adjoint_sampling.loss import adjoint_target, clip_per_atom, log_pbase, posterior_target, symmetry_copies
from adjoint_sampling.regularizer import regularizer_energy, regularizer_grad


def _entry(i, n=3):
    x = torch.full((n, 3), float(i))
    return BufferEntry(i, f"mol{i}", x, -x, 2 * x, float(i))


def test_buffer_is_fifo_with_fixed_capacity():
    buf = ReplayBuffer(3)
    for i in range(5):
        buf.add(_entry(i))
    assert len(buf) == 3
    assert [e.mol_index for e in buf.entries] == [2, 3, 4]
    got = buf.sample(50, torch.Generator().manual_seed(0))
    assert {e.mol_index for e in got} == {2, 3, 4}


def test_buffer_state_roundtrip_weights_only(tmp_path):
    buf = ReplayBuffer(4)
    for i, n in enumerate([3, 5, 2]):
        buf.add(_entry(i, n))
    save_checkpoint({"buffer": buf.state_dict(), "model": {}, "config": {}}, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    new = ReplayBuffer(1)
    new.load_state_dict(state["buffer"])
    assert new.capacity == 4 and len(new) == 3
    for a, b in zip(buf.entries, new.entries):
        assert a.key == b.key and a.energy == b.energy
        assert torch.equal(a.x1, b.x1) and torch.equal(a.grad_energy, b.grad_energy) and torch.equal(a.grad_reg, b.grad_reg)
    new.add(_entry(9))  # capacity survives the round trip
    new.add(_entry(10))
    assert [e.mol_index for e in new.entries] == [1, 2, 9, 10]


def test_regularizer_gradient_matches_finite_differences():
    g = graph_from_smiles("CCO")
    graphs = collate([g], DEFAULT_ELEMENTS)
    gen = torch.Generator().manual_seed(3)
    x = 1.2 * torch.randn(g.num_atoms, 3, generator=gen, dtype=torch.float64)
    e = regularizer_energy(x, graphs, 100.0)
    assert e.item() > 0  # a random cloud violates bonds and contacts
    grad = regularizer_grad(x, graphs, 100.0)
    eps = 1e-6
    fd = torch.zeros_like(x)
    for i in range(x.shape[0]):
        for d in range(3):
            xp, xm = x.clone(), x.clone()
            xp[i, d] += eps
            xm[i, d] -= eps
            fd[i, d] = (regularizer_energy(xp, graphs, 100.0) - regularizer_energy(xm, graphs, 100.0)).item() / (2 * eps)
    assert torch.allclose(grad, fd, atol=1e-4)


def test_regularizer_zero_for_a_sane_geometry():
    from rdkit.Chem import AllChem

    g = graph_from_smiles("CCO")
    AllChem.EmbedMolecule(g.mol, randomSeed=1)
    x = torch.tensor(g.mol.GetConformer().GetPositions())
    assert regularizer_energy(x, collate([g], DEFAULT_ELEMENTS), 100.0).item() == 0.0


def test_clip_and_adjoint_target():
    v = torch.tensor([[300.0, 400.0, 0.0], [1.0, 0.0, 0.0]])
    c = clip_per_atom(v, 150.0)
    assert torch.allclose(c[0].norm(), torch.tensor(150.0)) and torch.allclose(c[1], v[1])
    graphs = collate([graph_from_smiles("O")], DEFAULT_ELEMENTS)
    x1 = torch.tensor([[0.1, 0.0, 0.0], [-0.05, 0.02, 0.0], [-0.05, -0.02, 0.0]])
    grad_e = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.5]])
    a = adjoint_target(x1, grad_e, None, graphs, tau=0.5, h1_sq=2.0, max_norm=0)
    expect = grad_e / 0.5 - x1 / 2.0
    expect = expect - expect.mean(0)
    assert torch.allclose(a, expect)
    a_clip = adjoint_target(x1, grad_e, torch.ones_like(x1), graphs, tau=0.5, h1_sq=2.0, max_norm=1.0)
    assert a_clip.sum(0).abs().max() < 1e-6


def test_log_pbase_matches_gaussian_density():
    graphs = collate([graph_from_smiles("[H][H]")], DEFAULT_ELEMENTS)
    x1 = torch.tensor([[0.3, 0.0, 0.0], [-0.3, 0.0, 0.0]], dtype=torch.float64)
    h1 = 0.8
    # COM-free space of 2 atoms in 3-D is 3-dimensional; relative coordinate scaled by 1/sqrt(2)
    y = (x1[0] - x1[1]) / math.sqrt(2)
    expect = -0.5 * (y**2).sum() / h1 - 1.5 * math.log(2 * math.pi * h1)
    assert torch.allclose(log_pbase(x1, graphs, h1), expect.reshape(1))


def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "config": {}}, path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint({"model": {"w": torch.zeros(2)}, "config": {}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp files left behind


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an adjoint-sampling checkpoint"):
        load_checkpoint(tmp_path / "other.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil(), "config": {}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):  # weights_only refuses to run code
        load_checkpoint(tmp_path / "evil.pt")


def test_posterior_target_is_the_bridge_weighted_mean_of_the_bank():
    """Hand-computed: weights ∝ N(X_t; c·X1_j, s²) over the bank, per row's own c and s."""
    gen = torch.Generator().manual_seed(0)
    bank_x = torch.randn(5, 3, 2, generator=gen, dtype=torch.float64)
    bank_a = torch.randn(5, 3, 2, generator=gen, dtype=torch.float64)
    xt = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64)
    coef = torch.tensor([0.3, 0.8], dtype=torch.float64)
    std = torch.tensor([0.9, 0.4], dtype=torch.float64)
    got = posterior_target(xt, coef, std, bank_x, bank_a)
    for i in range(2):
        logw = torch.stack([-((xt[i] - coef[i] * bank_x[j]) ** 2).sum() / (2 * std[i] ** 2) for j in range(5)])
        w = torch.exp(logw - logw.max())
        w = w / w.sum()
        want = sum(w[j] * bank_a[j] for j in range(5))
        assert torch.allclose(got[i], want, atol=1e-12)


def test_posterior_target_limits():
    """std -> 0: the generating sample's own ã; std -> ∞ (flat bridge): the bank average."""
    gen = torch.Generator().manual_seed(1)
    bank_x = torch.randn(6, 4, 3, generator=gen, dtype=torch.float64)
    bank_a = torch.randn(6, 4, 3, generator=gen, dtype=torch.float64)
    coef = torch.tensor([1.0], dtype=torch.float64)
    at_end = posterior_target(bank_x[2:3], coef, torch.tensor([1e-4], dtype=torch.float64), bank_x, bank_a)
    assert torch.allclose(at_end[0], bank_a[2], atol=1e-12)
    flat = posterior_target(bank_x[2:3], coef, torch.tensor([1e6], dtype=torch.float64), bank_x, bank_a)
    assert torch.allclose(flat[0], bank_a.mean(0), atol=1e-6)


def test_symmetry_copies_preserve_invariants_and_move_targets_with_samples():
    """Each copy is an orthogonal map (and relabelling) of its sample: distances kept, ã·x pairing kept."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(8, 5, 3, generator=gen, dtype=torch.float64)
    a = torch.randn(8, 5, 3, generator=gen, dtype=torch.float64)
    for permute in (False, True):
        cx, ca = symmetry_copies(x, a, torch.Generator().manual_seed(3), permute=permute)
        assert not torch.allclose(cx, x)
        dist = lambda y: torch.cdist(y, y).flatten(1).sort(-1).values  # noqa: E731
        assert torch.allclose(dist(cx), dist(x), atol=1e-10)
        # the same map acts on x and a, so per-particle x·a products are a relabelling of the originals
        dots, cdots = (x * a).sum(-1), (cx * ca).sum(-1)
        assert torch.allclose(cdots.sort(-1).values, dots.sort(-1).values, atol=1e-10)
        if not permute:
            assert torch.allclose(cdots, dots, atol=1e-10)
