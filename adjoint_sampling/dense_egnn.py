"""Dense per-molecule evaluation of the EGNN controller: the same function as
``EGNNController``'s edge-list path, computed on [B, n, n, hidden] blocks with batched matmuls.

A batch holds many copies of few molecules, all fully connected. Copies with the same atom count n
are stacked into one block: per-node projections are broadcast over the pair axes instead of
gathered onto a global edge list, and the mean over neighbours is a sum over one axis instead of a
scatter. No padding is needed, and molecules never interact, so each block runs through all layers
on its own. Inputs and outputs are those of ``EGNNController.forward`` (positions in Å).

Pair (i, j) of a block is the edge src=j -> dst=i of the edge list: messages aggregate at i.
The diagonal i = j is computed too (1/n of the work) and removed from the means: its direction
x_i − x_i is zero, so it adds nothing to the coordinate update, and its message is subtracted.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn
from torch.nn import functional as F

from adjoint_sampling.graphs import GraphBatch
from adjoint_sampling.spaces import remove_com

if TYPE_CHECKING:
    from adjoint_sampling.controllers import EGNNController, EGNNLayer


def size_groups(graphs: GraphBatch) -> list[torch.Tensor]:
    """Node indices [B, n] of the molecule copies of each atom count n (copies in batch order)."""
    counts = [g.num_atoms for g in graphs.graphs]
    offsets = torch.cumsum(torch.tensor([0] + counts[:-1]), 0).tolist()
    by_size: dict[int, list[int]] = {}
    for off, n in zip(offsets, counts):
        by_size.setdefault(n, []).append(off)
    device = graphs.batch.device
    return [torch.tensor(offs, device=device)[:, None] + torch.arange(n, device=device)
            for n, offs in by_size.items()]


def dense_bonded(graphs: GraphBatch, idx: torch.Tensor, dtype) -> torch.Tensor:
    """Bonded flags [B, n, n] (1.0 where atoms i, j of a copy share a covalent bond)."""
    b, n = idx.shape
    # local positions of every atom in its block: (copy row, atom column)
    row = torch.full((graphs.num_atoms,), -1, dtype=torch.long, device=idx.device)
    col = torch.full_like(row, -1)
    row[idx.reshape(-1)] = torch.arange(b, device=idx.device).repeat_interleave(n)
    col[idx.reshape(-1)] = torch.arange(n, device=idx.device).repeat(b)
    src, dst = graphs.edge_index
    mine = (row[dst] >= 0) & (graphs.bonded > 0)
    out = torch.zeros(b, n, n, dtype=dtype, device=idx.device)
    out[row[dst[mine]], col[dst[mine]], col[src[mine]]] = 1.0
    return out


def _pair_geometry(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """diff [B, n, n, 3] = x_i − x_j (Å) and d² [B, n, n, 1] (Å²)."""
    diff = x.unsqueeze(2) - x.unsqueeze(1)
    return diff, (diff * diff).sum(-1, keepdim=True)


def _mean_over_neighbours(pair: torch.Tensor, n: int, drop_diagonal: bool) -> torch.Tensor:
    """Mean over j ≠ i of a [B, n, n, c] block; an isolated atom (n = 1) gets 0, like scatter-mean."""
    total = pair.sum(2)
    if drop_diagonal:
        total = total - pair.diagonal(dim1=1, dim2=2).transpose(1, 2)
    return total / max(n - 1, 1)


def _edge_mlp(mlp: nn.Sequential, pre: torch.Tensor) -> torch.Tensor:
    """phi_e = SiLU, Linear, SiLU on the [B, n, n, hidden] block. Without autograd (SDE steps) the
    activations run in place: two fewer block-sized allocations per layer."""
    if torch.is_grad_enabled():
        return mlp(pre)
    _, linear, _ = mlp
    return F.silu(F.linear(F.silu(pre, inplace=True), linear.weight, linear.bias), inplace=True)


def dense_layer(layer: "EGNNLayer", h: torch.Tensor, x: torch.Tensor, edge_in: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """EGNNLayer.forward on one block: h [B, n, hidden], x [B, n, 3] (Å), edge_in [B, n, n, 3] the
    input edge features [bonded, 1 − bonded, d²_in (Å²)]."""
    n = x.shape[1]
    diff, d2 = _pair_geometry(x)
    # phi_e's first linear map: one matmul for the pair features, then the per-node terms broadcast
    # over the pair axes in place (no gather; a matmul's backward does not need its output)
    pre = F.linear(torch.cat([d2, edge_in], dim=-1), layer.e_geo.weight)
    pre += layer.e_dst(h).unsqueeze(2)
    pre += layer.e_src(h).unsqueeze(1)
    m = _edge_mlp(layer.phi_e, pre)
    # the diagonal's d² = 0 would give sqrt an infinite derivative (0·inf = NaN): lift it to 1 there
    dist = (d2 + torch.eye(n, dtype=d2.dtype, device=d2.device).unsqueeze(-1)).sqrt()
    shift = diff / (dist + 1.0) * layer.phi_x(m)
    x = x + _mean_over_neighbours(shift, n, drop_diagonal=False)  # diagonal direction is exactly 0
    if layer.phi_h is not None:
        agg = _mean_over_neighbours(m, n, drop_diagonal=True)
        h = h + layer.phi_h(torch.cat([h, agg], dim=-1))
    return h, x


def dense_block(model: "EGNNController", h: torch.Tensor, x: torch.Tensor, bonded: torch.Tensor,
                layer_fn: Callable = dense_layer) -> torch.Tensor:
    """All layers on one block of same-size copies; returns the final positions [B, n, 3] (Å).
    layer_fn: dense_layer or a compiled version of it (scripts/bench_speed.py --compile)."""
    _, d2_in = _pair_geometry(x)
    bonded = bonded.unsqueeze(-1)
    edge_in = torch.cat([bonded, 1 - bonded, d2_in], dim=-1)
    x_l = x
    for layer in model.layers:
        h, x_l = layer_fn(layer, h, x_l, edge_in)
    return x_l


def dense_forward(model: "EGNNController", t: torch.Tensor, x: torch.Tensor, graphs: GraphBatch,
                  layer_fn: Callable = dense_layer) -> torch.Tensor:
    """EGNNController.forward computed block by block (see module docstring). x [N, 3] Å -> v [N, 3]."""
    n = x.shape[0]
    if t.dim() == 0 or t.numel() == 1:
        t = t.reshape(1).expand(n)
    onehot = nn.functional.one_hot(graphs.node_type, model.n_elements).to(x.dtype)
    h0 = model.embed(torch.cat([onehot, model._time_features(t, n, x.dtype)], dim=-1))
    x_out = torch.empty_like(x)
    for idx in size_groups(graphs):
        x_blk = dense_block(model, h0[idx], x[idx], dense_bonded(graphs, idx, x.dtype), layer_fn)
        x_out = x_out.index_put((idx.reshape(-1),), x_blk.reshape(-1, x.shape[1]))
    v = x_out - x
    if model.max_output_norm > 0:
        norm = v.norm(dim=-1, keepdim=True)
        v = v * torch.clamp(model.max_output_norm / (norm + 1e-12), max=1.0)
    return remove_com(v, graphs.batch, graphs.num_graphs)
