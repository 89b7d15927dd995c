"""Dense per-molecule evaluation of the EGNN controller: the same function as
``EGNNController``'s edge-list path, computed pair tile by pair tile with a hand-written backward.

A batch holds many copies of few molecules, all fully connected. Copies with the same atom count n
are stacked into one block [B, n, ...]: per-node projections are broadcast over the pair axes
instead of gathered onto a global edge list, and the mean over neighbours is a sum over one axis
instead of a scatter. Molecules never interact, so each block runs through all layers on its own.
Inputs and outputs are those of ``EGNNController.forward`` (positions in Å).

Why tiles. The per-pair work of a layer (phi_e, phi_x and the coordinate update) is two
hidden x hidden matmuls and a few activations on every pair. Done on the whole [B, n, n, hidden]
block at once, each of those tensors is tens of MB: every step pays for fresh pages and DRAM
traffic, and a matmul with 65k rows runs at a third of the rate of one with 2k rows (measured,
README "Speed"). A tile of about ``PAIR_TILE`` pairs keeps every intermediate in the core's L2
cache. Under autograd the tile loop is one ``torch.autograd.Function`` per layer: it saves only
the three pre-activations of each tile and computes the gradients of all inputs and parameters
tile by tile (the same six matmuls per pair as autograd would run, no extra recomputation).

Pair (i, j) of a block is the edge src=j -> dst=i of the edge list: messages aggregate at i.
The diagonal i = j is computed too (1/n of the work) and removed from the feature mean: its
direction x_i − x_i is zero, so it adds nothing to the coordinate update.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Optional

import torch
from torch import nn
from torch.nn import functional as F

from adjoint_sampling.graphs import GraphBatch
from adjoint_sampling.spaces import remove_com

if TYPE_CHECKING:
    from adjoint_sampling.controllers import EGNNController, EGNNLayer

# pairs per tile: [PAIR_TILE, 128] float32 is 1 MB, the L2 cache of one core of the machines we run on
PAIR_TILE = 2048

_silu_backward = torch.ops.aten.silu_backward

LOW_PRECISION = {"float32": None, "bfloat16": torch.bfloat16}


def _mm(a: torch.Tensor, b: torch.Tensor, lowp: Optional[torch.dtype]) -> torch.Tensor:
    """a @ b, with both operands rounded to ``lowp`` when given (products accumulate in float32
    inside the kernel; the result is rounded to lowp and returned in a's dtype)."""
    if lowp is None:
        return a @ b
    return (a.to(lowp) @ b.to(lowp)).to(a.dtype)


def _linear(a: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor, lowp: Optional[torch.dtype]) -> torch.Tensor:
    """a @ w_t + bias; with lowp, all three rounded to lowp (the kernel adds the bias in float32)
    and the result returned in a's dtype: one cast pass, not a mixed-dtype add (twice as slow)."""
    if lowp is None:
        return torch.addmm(bias, a, w_t)
    return torch.addmm(bias.to(lowp), a.to(lowp), w_t).to(a.dtype)


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
    """diff [B, n, n, d] = x_i − x_j (Å) and d² [B, n, n, 1] (Å²)."""
    diff = x.unsqueeze(2) - x.unsqueeze(1)
    return diff, (diff * diff).sum(-1, keepdim=True)


def tiles(b: int, n: int, target: int = PAIR_TILE) -> Iterator[tuple[int, int, int, int]]:
    """Rectangles (b0, b1, i0, i1) of a [b, n, n] block: copies b0:b1, rows i0:i1, all n columns,
    about ``target`` pairs each: whole copies when n² fits, else row slices of one copy."""
    if n * n <= target:
        k = max(1, target // (n * n))
        for b0 in range(0, b, k):
            yield b0, min(b, b0 + k), 0, n
    else:
        r = max(1, target // n)
        for b0 in range(b):
            for i0 in range(0, n, r):
                yield b0, b0 + 1, i0, min(n, i0 + r)


class _Tile:
    """Geometry of one tile: diff = x_i − x_j [k, r, n, d] (Å), g = [d², edge_in] [k·r·n, 4] (the
    input of e_geo), the lifted distance (diagonal d² + 1, so sqrt stays differentiable) and
    unit = diff / (dist + 1), the bounded direction of the coordinate update."""

    def __init__(self, x: torch.Tensor, edge_in: torch.Tensor, rect: tuple[int, int, int, int]):
        b0, b1, i0, i1 = rect
        self.rect = rect
        xj = x[b0:b1]
        self.diff = xj[:, i0:i1, None, :] - xj[:, None, :, :]
        d2 = (self.diff * self.diff).sum(-1, keepdim=True)
        k, r, n, _ = self.diff.shape
        self.shape = (k, r, n)
        self.rows = torch.arange(r, device=x.device)
        self.cols = self.rows + i0  # column of each row's diagonal pair
        self.g = torch.cat([d2, edge_in[b0:b1, i0:i1]], dim=-1).reshape(-1, 4)
        eye = torch.zeros(r, n, 1, dtype=x.dtype, device=x.device)
        eye[self.rows, self.cols] = 1.0
        self.dist = (d2 + eye).sqrt()
        self.unit = self.diff / (self.dist + 1.0)

    def diagonal(self, pair: torch.Tensor) -> torch.Tensor:
        """The diagonal pairs (i, i) of a [k·r·n, c] tile tensor as [k, r, c] (a view-free copy)."""
        k, r, n = self.shape
        return pair.view(k, r, n, -1)[:, self.rows, self.cols]


def _weights(layer: "EGNNLayer") -> tuple[torch.Tensor, ...]:
    """(Wg, W2, b2, Wx1, bx1, wx2, bx2): e_geo, phi_e's linear map and phi_x's two linear maps."""
    lin_e, x1, x2 = layer.phi_e[1], layer.phi_x[0], layer.phi_x[2]
    return (layer.e_geo.weight, lin_e.weight, lin_e.bias, x1.weight, x1.bias, x2.weight, x2.bias)


def _tile_forward(P, Q, x, edge_in, weights, rect, need_agg: bool, keep: bool, lowp=None):
    """One tile of the per-pair work. Returns (dx [k, r, d], agg [k, r, hidden] or None, saved):
    dx the sum over j of the coordinate shifts and agg the sum over j ≠ i of the messages (means
    are taken by the caller); saved = (pre, z, w, s), the pre-activations and the shift scale,
    when keep. lowp: the dtype of the two hidden x hidden matmuls (None: that of the inputs)."""
    Wg, W2, b2, Wx1, bx1, wx2, bx2 = weights
    b0, b1, i0, i1 = rect
    tile = _Tile(x, edge_in, rect)
    k, r, n = tile.shape
    hidden = W2.shape[0]
    pre = (P[b0:b1, i0:i1, None, :] + Q[b0:b1, None, :, :]).reshape(-1, hidden)
    pre.addmm_(tile.g, Wg.t())
    # without keep (no autograd) every activation overwrites its input
    a = F.silu(pre) if keep else F.silu(pre, inplace=True)
    z = _linear(a, W2.t(), b2, lowp)
    m = F.silu(z) if keep else F.silu(z, inplace=True)
    agg = None
    if need_agg:
        agg = m.view(k, r, n, hidden).sum(2) - tile.diagonal(m)
    w = _linear(m, Wx1.t(), bx1, lowp)
    y = F.silu(w) if keep else F.silu(w, inplace=True)
    s = torch.addmv(bx2, y, wx2[0])
    dx = (tile.unit * s.view(k, r, n, 1)).sum(2)
    return dx, agg, ((pre, z, w, s) if keep else None)


def _tile_backward(x, edge_in, weights, rect, saved, gdx, gagg, grads, lowp=None):
    """Accumulates the gradients of one tile into ``grads`` (input or parameter name -> tensor;
    only the names present are computed), given gdx and gagg, the gradients of the tile's sums
    dx [k, r, d] and agg [k, r, hidden] (or None)."""
    Wg, W2, b2, Wx1, bx1, wx2, bx2 = weights
    b0, b1, i0, i1 = rect
    pre, z, w, s = saved
    tile = _Tile(x, edge_in, rect)
    k, r, n = tile.shape
    hidden = W2.shape[0]
    gshift = gdx[:, :, None, :]
    gs = (tile.unit * gshift).sum(-1).reshape(-1)
    grads["wx2"] += (gs @ F.silu(w))[None]
    grads["bx2"] += gs.sum().reshape(1)
    gw = _silu_backward(gs[:, None] * wx2, w)
    grads["bx1"] += gw.sum(0)
    if lowp is not None:
        gw = gw.to(lowp)
    grads["Wx1"] += _mm(gw.t(), F.silu(z), lowp).to(x.dtype)
    gm = _mm(gw, Wx1, lowp).to(x.dtype)
    if gagg is not None:  # agg sums j ≠ i: every pair but the diagonal gets gagg of its row
        gm4 = gm.view(k, r, n, hidden)
        gm4 += gagg[:, :, None, :]
        gm4[:, tile.rows, tile.cols] -= gagg
    gz = _silu_backward(gm, z)
    grads["b2"] += gz.sum(0)
    if lowp is not None:
        gz = gz.to(lowp)
    grads["W2"] += _mm(gz.t(), F.silu(pre), lowp).to(x.dtype)
    gpre = _silu_backward(_mm(gz, W2, lowp).to(x.dtype), pre)
    gpre4 = gpre.view(k, r, n, hidden)
    if "P" in grads:
        grads["P"][b0:b1, i0:i1] += gpre4.sum(2)
    if "Q" in grads:
        grads["Q"][b0:b1] += gpre4.sum(1)
    # skinny products with the 4 pair features: the transposed forms run 5x faster than gpre.t() @ g
    grads["Wg"] += (tile.g.t() @ gpre).t()
    if "edge_in" in grads:
        grads["edge_in"][b0:b1, i0:i1] += (Wg[:, 1:].t() @ gpre.t()).t().reshape(k, r, n, -1)
    if "x" in grads:
        # unit = diff / (dist + 1), dist = |diff| off the diagonal (where diff = 0 the second term is 0)
        gunit = s.view(k, r, n, 1) * gshift
        dist1 = tile.dist + 1.0
        gdiff = gunit / dist1 - ((gunit * tile.diff).sum(-1, keepdim=True) / (dist1 * dist1 * tile.dist)) * tile.diff
        gd2 = torch.mv(gpre, Wg[:, 0].contiguous()).view(k, r, n, 1)  # d² in e_geo's input
        gdiff += 2.0 * gd2 * tile.diff
        grads["x"][b0:b1, i0:i1] += gdiff.sum(2)
        grads["x"][b0:b1] -= gdiff.sum(1)


def _tile_means(P, Q, x, edge_in, weights, need_agg: bool, tile: int, keep: bool, lowp):
    """The tile loop of one layer's forward: (dx [B, n, d], agg [B, n, hidden or 0], saved per tile
    when keep); means over neighbours, an isolated atom (n = 1) getting 0 like scatter-mean."""
    b, n, hidden = P.shape
    dx = torch.empty_like(x)
    agg = P.new_empty(b, n, hidden if need_agg else 0)
    saved = []
    mm_weights = _cast(weights, lowp)
    for rect in tiles(b, n, tile):
        b0, b1, i0, i1 = rect
        dx_t, agg_t, keep_t = _tile_forward(P, Q, x, edge_in, mm_weights, rect, need_agg, keep, lowp)
        dx[b0:b1, i0:i1] = dx_t
        if need_agg:
            agg[b0:b1, i0:i1] = agg_t
        if keep:
            saved.extend(keep_t)
    denom = max(n - 1, 1)
    return dx / denom, agg / denom, saved


_NAMES = ("P", "Q", "x", "edge_in", "Wg", "W2", "b2", "Wx1", "bx1", "wx2", "bx2")


class _PairLayer(torch.autograd.Function):
    """The per-pair part of one layer on a block: means over neighbours of the coordinate shifts
    (dx [B, n, d], Å) and of the messages (agg [B, n, hidden]; empty when not needed)."""

    @staticmethod
    def forward(ctx, P, Q, x, edge_in, Wg, W2, b2, Wx1, bx1, wx2, bx2, need_agg: bool, tile: int, lowp=None):
        weights = (Wg, W2, b2, Wx1, bx1, wx2, bx2)
        b, n, _ = P.shape
        dx, agg, saved = _tile_means(P, Q, x, edge_in, weights, need_agg, tile, True, lowp)
        ctx.need_agg, ctx.tile, ctx.denom, ctx.shape, ctx.lowp = need_agg, tile, max(n - 1, 1), (b, n), lowp
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, edge_in, *weights, *saved)
        return dx, agg

    @staticmethod
    def backward(ctx, gdx, gagg):
        x, edge_in, *rest = ctx.saved_tensors
        weights, saved = tuple(rest[:7]), rest[7:]
        b, n = ctx.shape
        hidden = weights[1].shape[0]
        shapes = {"P": (b, n, hidden), "Q": (b, n, hidden), "x": x.shape, "edge_in": edge_in.shape}
        shapes.update((k, v.shape) for k, v in zip(_NAMES[4:], weights))
        grads = {k: x.new_zeros(shapes[k]) for k, need in zip(_NAMES, ctx.needs_input_grad) if need}
        for k in _NAMES[4:]:  # the tile loop accumulates into every parameter's gradient
            grads.setdefault(k, x.new_zeros(shapes[k]))
        gdx = torch.zeros_like(x) if gdx is None else gdx / ctx.denom
        gagg = gagg / ctx.denom if (ctx.need_agg and gagg is not None) else None
        mm_weights = _cast(weights, ctx.lowp)
        for t, rect in enumerate(tiles(b, n, ctx.tile)):
            b0, b1, i0, i1 = rect
            _tile_backward(x, edge_in, mm_weights, rect, saved[4 * t: 4 * t + 4], gdx[b0:b1, i0:i1],
                           None if gagg is None else gagg[b0:b1, i0:i1], grads, ctx.lowp)
        out = tuple(grads[k] if need else None for k, need in zip(_NAMES, ctx.needs_input_grad))
        return (*out, None, None, None)


def _cast(weights: tuple, lowp: Optional[torch.dtype]) -> tuple:
    """The weights with the two hidden x hidden matrices (W2, Wx1) rounded to lowp, once per layer."""
    if lowp is None:
        return weights
    Wg, W2, b2, Wx1, bx1, wx2, bx2 = weights
    return (Wg, W2.detach().to(lowp), b2, Wx1.detach().to(lowp), bx1, wx2, bx2)


def pair_means(layer: "EGNNLayer", P: torch.Tensor, Q: torch.Tensor, x: torch.Tensor, edge_in: torch.Tensor,
               need_agg: bool, tile: int = PAIR_TILE, lowp: Optional[torch.dtype] = None
               ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Mean coordinate shift dx [B, n, d] (Å) and mean message agg [B, n, hidden] (None unless
    need_agg) of one layer. P = e_dst(h), Q = e_src(h) [B, n, hidden]; x [B, n, d] (Å; d = 3, or 2
    for planar synthetic systems).
    lowp: dtype of the per-pair hidden x hidden matmuls (None: the inputs' dtype, exact)."""
    weights = _weights(layer)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (P, Q, x, edge_in, *weights)):
        dx, agg = _PairLayer.apply(P, Q, x, edge_in, *weights, need_agg, tile, lowp)
        return dx, (agg if need_agg else None)
    dx, agg, _ = _tile_means(P, Q, x, edge_in, weights, need_agg, tile, False, lowp)
    return dx, (agg if need_agg else None)


def dense_layer(layer: "EGNNLayer", h: torch.Tensor, x: torch.Tensor, edge_in: torch.Tensor,
                tile: int = PAIR_TILE, lowp: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """EGNNLayer.forward on one block: h [B, n, hidden], x [B, n, d] (Å), edge_in [B, n, n, 3] the
    input edge features [bonded, 1 − bonded, d²_in (Å²)]."""
    need_agg = layer.phi_h is not None
    dx, agg = pair_means(layer, layer.e_dst(h), layer.e_src(h), x, edge_in, need_agg, tile, lowp)
    x = x + dx
    if need_agg:
        h = h + layer.phi_h(torch.cat([h, agg], dim=-1))
    return h, x


def dense_block(model: "EGNNController", h: torch.Tensor, x: torch.Tensor, bonded: torch.Tensor,
                tile: int = PAIR_TILE) -> torch.Tensor:
    """All layers on one block of same-size copies; returns the final positions [B, n, d] (Å).
    The per-pair matmuls run in model.pair_matmul_dtype ("float32": the input dtype, exact)."""
    lowp = LOW_PRECISION[model.pair_matmul_dtype]
    _, d2_in = _pair_geometry(x)
    bonded = bonded.unsqueeze(-1)
    edge_in = torch.cat([bonded, 1 - bonded, d2_in], dim=-1)
    x_l = x
    for layer in model.layers:
        h, x_l = dense_layer(layer, h, x_l, edge_in, tile, lowp)
    return x_l


def dense_forward(model: "EGNNController", t: torch.Tensor, x: torch.Tensor, graphs: GraphBatch,
                  tile: int = PAIR_TILE) -> torch.Tensor:
    """EGNNController.forward computed block by block (see module docstring). x [N, d] Å -> v [N, d]."""
    n = x.shape[0]
    if t.dim() == 0 or t.numel() == 1:
        t = t.reshape(1).expand(n)
    onehot = nn.functional.one_hot(graphs.node_type, model.n_elements).to(x.dtype)
    h0 = model.embed(torch.cat([onehot, model._time_features(t, n, x.dtype)], dim=-1))
    x_out = torch.empty_like(x)
    for idx in size_groups(graphs):
        x_blk = dense_block(model, h0[idx], x[idx], dense_bonded(graphs, idx, x.dtype), tile)
        x_out = x_out.index_put((idx.reshape(-1),), x_blk.reshape(-1, x.shape[1]))
    v = x_out - x
    if model.max_output_norm > 0:
        norm = v.norm(dim=-1, keepdim=True)
        v = v * torch.clamp(model.max_output_norm / (norm + 1e-12), max=1.0)
    return remove_com(v, graphs.batch, graphs.num_graphs)
