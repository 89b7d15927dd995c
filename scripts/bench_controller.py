"""Time the EGNN edge-message block: split per-node projections (what the controller uses) against
the textbook concatenation Linear([h_i, h_j, d², e_ij]) with the same weights, in one process.

    python scripts/bench_controller.py                 # 64 ethanol copies, hidden 64 (quick preset)
    python scripts/bench_controller.py --copies 64 --smiles "CC(=O)Nc1ccc(O)cc1" --hidden 128

Prints both medians, their ratio, and the largest difference between the two outputs.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from adjoint_sampling.config import DEFAULT_ELEMENTS
from adjoint_sampling.controllers import EGNNLayer
from adjoint_sampling.graphs import collate, graph_from_smiles


def concat_form(layer: EGNNLayer, h, edge_index, geo):
    """The same pre-activation computed as one Linear on concatenated edge inputs."""
    src, dst = edge_index
    weight = torch.cat([layer.e_dst.weight, layer.e_src.weight, layer.e_geo.weight], dim=1)
    return torch.nn.functional.linear(torch.cat([h[dst], h[src], geo], dim=-1), weight, layer.e_dst.bias)


def split_form(layer: EGNNLayer, h, edge_index, geo):
    src, dst = edge_index
    return layer.e_dst(h)[dst] + layer.e_src(h)[src] + layer.e_geo(geo)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smiles", default="CCO")
    p.add_argument("--copies", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    graphs = collate([graph_from_smiles(args.smiles)] * args.copies, DEFAULT_ELEMENTS)
    layer = EGNNLayer(args.hidden, edge_dim=3)
    h = torch.randn(graphs.num_atoms, args.hidden)
    geo = torch.randn(graphs.edge_index.shape[1], 4)
    times = {"concat": [], "split": []}
    with torch.no_grad():
        diff = (concat_form(layer, h, graphs.edge_index, geo) - split_form(layer, h, graphs.edge_index, geo)).abs().max()
        for _ in range(args.repeats):  # interleaved so both see the same machine load
            for name, fn in (("concat", concat_form), ("split", split_form)):
                t0 = time.perf_counter()
                fn(layer, h, graphs.edge_index, geo)
                times[name].append(time.perf_counter() - t0)
    c, s = statistics.median(times["concat"]), statistics.median(times["split"])
    print(f"{args.copies} x {args.smiles}: {graphs.num_atoms} atoms, {graphs.edge_index.shape[1]} edges, hidden {args.hidden}")
    print(f"concat {c * 1e3:.3f} ms, split {s * 1e3:.3f} ms, speed-up {c / s:.2f}x, max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
