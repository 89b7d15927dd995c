"""Controller speed: the plain float32 reference path against the fast path (model.fast), side by side in
one process, on SPICE test molecules.

    python scripts/bench_speed.py                          # 16 molecules, 12 x 128 EGNN, 5 repeats
    python scripts/bench_speed.py --molecules 4 --repeats 3 --sample-molecules 2 -n 4   # a quick look

Workload. Molecules: ``read_molecule_list(<shared>/data/spice/spice_test.txt)`` (file order), then
``bench_sampling.pick_molecules(entries, --molecules, --pick-seed)``: random.Random(seed 0) picks K
indices, run in file order. Positions X_1: one ETKDGv3 conformer per molecule (randomSeed 1, Å),
COM removed; adjoint targets ã: standard normal, COM-free (their values do not change the cost).
  train step   one RAM step at batch --molecules (one copy of each molecule): bridge sample X_t,
               forward, loss ‖v + ã‖², backward, Adam step (lr 1e-4).
  SDE step     one controller evaluation v(t = 0.5, X_t) for 2 copies of each molecule (32 systems
               at 16 molecules), no grad.
EGNN: --layers x --hidden (default 12 x 128, the reference size), elements of the default vocabulary.
Three EGNNControllers with the same parameters (each loads the plain one's state dict): plain (the
edge-list float32 reference, model.fast=false), fast (model.fast, tiled, float32) and fast bf16
(model.pair_matmul_dtype=bfloat16). They run interleaved after one untimed warm-up each. Reported:
the median of --repeats wall times (time.perf_counter), the ratios plain / path (> 1: faster); the
agreement of each path's output, loss and gradients with plain; and the floor: the time the
per-pair hidden x hidden matmuls alone take at the rate this process measures for one tile's
product, in float32 and bfloat16.
Torsional controller: preset spice-cpu's size (3 blocks, 16 scalars, 4 vectors + 4 pseudovectors,
radius 5 Å); train step on torsion angles (radians) in the torsion space, SDE step for the same 2
copies. Plain is eager e3nn, fast is model.compile=true (its compilation time is printed and not
counted in the steps).
Memory: bytes of the tensors the train step saves for backward (autograd saved-tensor hooks, each
storage counted once), per path, and the process's peak resident set (resource.getrusage) at the end.
Sampling: conformers/s of ETKDGv3 and of the Cartesian sampler of preset quick-cartesian (4 x 64,
untrained: speed does not depend on the weights) with plain and fast path, on the first
--sample-molecules molecules, -n conformers each, the preset's eval NFE unless --nfe; plus the
torsional sampler of spice-cpu, eager and compiled (warm-up, which compiles, not counted). Uses bench_sampling's run_etkdg / run_sampler, timed the same way.
Threads: --threads torch threads (default 1) and ETKDG numThreads.
torch.compile of the EGNN tile function (no-grad path; inductor, dynamic shapes, torch 2.13) was
tried outside this script: slow to compile, hardly faster than eager; not used, so not timed here.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from rdkit import Chem

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampling import SPICE_TEST, pick_molecules, run_etkdg, run_sampler  # noqa: E402

from adjoint_sampling import dense_egnn  # noqa: E402
from adjoint_sampling.config import DEFAULT_ELEMENTS, load_config  # noqa: E402
from adjoint_sampling.controllers import EGNNController, build_controller  # noqa: E402
from adjoint_sampling.graphs import collate, graph_from_smiles, read_molecule_list  # noqa: E402
from adjoint_sampling.loss import ram_loss, sample_bridge  # noqa: E402
from adjoint_sampling.sampling import Sampler  # noqa: E402
from adjoint_sampling.schedules import GeometricSchedule  # noqa: E402
from adjoint_sampling.shared_data import shared_dir  # noqa: E402
from adjoint_sampling.spaces import TorsionSpace, remove_com  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--molecules", type=int, default=16, help="molecules K = training batch; SDE step on 2K systems [16]")
    p.add_argument("--pick-seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per path (median) [5]")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sample-molecules", type=int, default=4, help="molecules of the sampling run; 0 = skip it [4]")
    p.add_argument("-n", type=int, default=8, help="conformers per molecule in the sampling run [8]")
    p.add_argument("--nfe", type=int, default=None, help="sampling steps [each preset's sde.eval_nfe]")
    p.add_argument("--skip-torsional", action="store_true")
    return p.parse_args(argv)


def load_molecules(k: int, seed: int) -> list[tuple[str, str]]:
    shared = shared_dir()
    if shared is None or not (shared / SPICE_TEST).is_file():
        sys.exit("bench_speed: <shared>/data/spice/spice_test.txt not found (set ADJOINT_SAMPLING_SHARED)")
    return pick_molecules(read_molecule_list(shared / SPICE_TEST), k, seed)


def etkdg_positions(graphs) -> torch.Tensor:
    """One ETKDG conformer per copy, COM-free, as float32 [N, 3] (Å)."""
    xs = [torch.as_tensor(run_etkdg(g.mol, 1, 0, 1)[1][0], dtype=torch.float32) for g in graphs.graphs]
    return remove_com(torch.cat(xs), graphs.batch, graphs.num_graphs)


def median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall seconds of each fn, run interleaved (one warm-up each first) so load drifts hit all alike."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes of distinct storages autograd saves for backward during fn()."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def train_step_fn(model, x1, target, graphs, schedule, space=None, measure_only=False):
    """One RAM step (bridge sample, forward, loss, backward, Adam) with a fixed bridge seed."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def loss_only():
        return ram_loss(model, x1, target, graphs, schedule, torch.Generator().manual_seed(0), space=space)

    def step():
        loss = loss_only()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step, loss_only


def sde_step_fn(model, xt, graphs, t):
    def step():
        with torch.no_grad():
            return model(t, xt, graphs)
    return step


def egnn_models(layers: int, hidden: int) -> dict[str, EGNNController]:
    """plain (edge-list float32 reference), fast (tiled, float32) and fast bf16 (tiled, bfloat16 pair
    matmuls): the same parameters."""
    torch.manual_seed(0)
    kw = dict(n_elements=len(DEFAULT_ELEMENTS), hidden=hidden, layers=layers, max_output_norm=300.0)
    models = {"plain": EGNNController(**kw, fast=False), "fast": EGNNController(**kw, fast=True),
              "fast bf16": EGNNController(**kw, fast=True, pair_matmul_dtype="bfloat16")}
    for m in models.values():
        m.load_state_dict(models["plain"].state_dict())
    return models


def matmul_rate(rows: int, hidden: int, dtype: torch.dtype, repeats: int = 20) -> float:
    """FLOP/s of one [rows, hidden] x [hidden, hidden] product (the per-pair matmul of a tile)."""
    a, w = torch.randn(rows, hidden).to(dtype), torch.randn(hidden, hidden).to(dtype)
    t = median_times({"mm": lambda: a @ w}, repeats)["mm"]
    return 2 * rows * hidden * hidden / t


def matmul_floor(graphs, graphs2, layers: int, hidden: int) -> None:
    """Prints the time the per-pair hidden x hidden matmuls alone take at this process's measured
    rate: two per pair and layer forward, four more backward; pairs = sum of n² over copies. No
    exact fast path can beat it, so plain / floor bounds the ratio any float32 path can reach."""
    rates = {d: matmul_rate(dense_egnn.PAIR_TILE, hidden, d) for d in (torch.float32, torch.bfloat16)}
    per = 2 * hidden * hidden * layers
    for label, g, products in (("train step", graphs, 6), ("SDE step", graphs2, 2)):
        flop = sum(x.num_atoms ** 2 for x in g.graphs) * per * products
        print(f"per-pair matmuls of the {label}: {flop / 1e9:.1f} GFLOP = {flop / rates[torch.float32] * 1e3:.0f} ms "
              f"at the float32 rate {rates[torch.float32] / 1e9:.0f} GFLOP/s, {flop / rates[torch.bfloat16] * 1e3:.0f} ms "
              f"at the bfloat16 rate {rates[torch.bfloat16] / 1e9:.0f} GFLOP/s ([{dense_egnn.PAIR_TILE}, {hidden}] x "
              f"[{hidden}, {hidden}])", flush=True)


def bench_egnn(args, picked, schedule) -> list[dict]:
    graphs = collate([graph_from_smiles(s, name=n) for s, n in picked], DEFAULT_ELEMENTS)
    x1 = etkdg_positions(graphs)
    target = remove_com(torch.randn(x1.shape, generator=torch.Generator().manual_seed(1)), graphs.batch, graphs.num_graphs)
    graphs2 = collate(graphs.graphs * 2, DEFAULT_ELEMENTS)
    t_sde = torch.tensor(0.5)
    xt = sample_bridge(torch.cat([x1, x1]), graphs2, schedule, torch.Generator().manual_seed(2), t_min=0.5, t_max=0.5)[1]
    models = egnn_models(args.layers, args.hidden)
    plain = models["plain"]
    matmul_floor(graphs, graphs2, args.layers, args.hidden)
    with torch.no_grad():  # agreement at this size (the CI test checks it at a small one)
        v_ref = plain(t_sde, xt, graphs2)
        for k, m in models.items():
            if k != "plain":
                rel = ((m(t_sde, xt, graphs2) - v_ref).abs().max() / v_ref.abs().max()).item()
                print(f"{k}: max |v - v_plain| / max |v_plain| = {rel:.1e} (SDE step input)", flush=True)
    steps = {k: train_step_fn(m, x1, target, graphs, schedule) for k, m in models.items()}
    ref = None
    for k, (_, loss_only) in steps.items():  # loss and gradients of one training step, against plain
        loss = loss_only()
        grads = torch.autograd.grad(loss, list(models[k].parameters()))
        if ref is None:
            ref = (loss.item(), grads)
            continue
        g_rel = max(((g - g0).norm() / g0.norm().clamp_min(1e-30)).item() for g, g0 in zip(grads, ref[1]))
        print(f"{k}: |loss - loss_plain| / loss_plain = {abs(loss.item() - ref[0]) / ref[0]:.1e}, "
              f"max over parameters of |grad - grad_plain| / |grad_plain| = {g_rel:.1e}", flush=True)
    mem = {k: saved_bytes(loss_only) for k, (_, loss_only) in steps.items()}
    train = median_times({k: s for k, (s, _) in steps.items()}, args.repeats)
    sde = median_times({k: sde_step_fn(m, xt, graphs2, t_sde) for k, m in models.items()}, args.repeats)
    name = f"EGNN {args.layers}x{args.hidden}"
    return [{"controller": name, "step": f"RAM train step, batch {graphs.num_graphs}", **train, "saved_MB": mem},
            {"controller": name, "step": f"SDE step, {graphs2.num_graphs} systems, no grad", **sde}]


def bench_torsional(args, picked, schedule_unused) -> list[dict]:
    cfg = load_config("spice-cpu")
    sampler = Sampler(cfg, torch.nn.Identity(), torch.device("cpu"))  # only for .graph(): torsions + seeds
    mols = [g for g in (sampler.graph(s, name=n) for s, n in picked) if g.num_torsions > 0]
    graphs = collate(mols, cfg.model.elements)
    torch.manual_seed(0)
    model = build_controller(cfg.model, "torsional")
    compiled = build_controller(load_config("spice-cpu", ["model.compile=true"]).model, "torsional")
    compiled.load_state_dict(model.state_dict())
    space = TorsionSpace()
    from adjoint_sampling.schedules import make_schedule
    sched = make_schedule(cfg.sde.schedule, cfg.sde.sigma_min, cfg.sde.sigma_max, cfg.sde.sigma)
    gen = torch.Generator().manual_seed(3)
    n_t = graphs.torsion.count
    theta1 = (torch.rand(n_t, 1, generator=gen) * 2 - 1) * torch.pi
    target = torch.randn(n_t, 1, generator=gen)
    graphs2 = collate(mols * 2, cfg.model.elements)
    theta2 = torch.cat([theta1, theta1])
    train, sde, mem = {}, {}, {}
    for k, m in (("plain", model), ("fast", compiled)):
        train[k], loss_only = train_step_fn(m, theta1, target, graphs, sched, space=space)
        sde[k] = sde_step_fn(m, theta2, graphs2, torch.tensor(0.5))
        mem[k] = saved_bytes(loss_only)
    t0 = time.perf_counter()  # the compiled model's first calls compile (no grad, then with grad)
    v_fast = sde["fast"]()
    train["fast"]()
    print(f"torsional, model.compile: first SDE + train step {time.perf_counter() - t0:.0f} s (compilation)", flush=True)
    v_ref = sde["plain"]()
    print(f"torsional compiled: max |v - v_plain| / max |v_plain| = "
          f"{((v_fast - v_ref).abs().max() / v_ref.abs().max()).item():.1e} (SDE step input)", flush=True)
    compiled.load_state_dict(model.state_dict())  # the Adam step above moved it
    tt = median_times(train, args.repeats)
    ts = median_times(sde, args.repeats)
    name = f"torsional {cfg.model.layers} blocks, {cfg.model.hidden}s {cfg.model.vectors}v (fast: model.compile)"
    return [{"controller": name, "step": f"RAM train step, batch {graphs.num_graphs} ({n_t} torsions)", **tt, "saved_MB": mem},
            {"controller": name, "step": f"SDE step, {graphs2.num_graphs} systems, no grad", **ts}]


def bench_sampling_rate(args, picked) -> list[tuple[str, int, float, int]]:
    """(generator, NFE, conformers/s, conformers) of ETKDG and the samplers on the first molecules."""
    picked = picked[: args.sample_molecules]
    gens = {}
    for fast in (False, True):
        cfg = load_config("quick-cartesian", [f"model.fast={str(fast).lower()}"])
        torch.manual_seed(0)
        gens[f"cartesian quick 4x64, {'fast' if fast else 'plain'}"] = Sampler(cfg, build_controller(cfg.model), torch.device("cpu"))
    if not args.skip_torsional:
        for compile_ in (False, True):
            cfg = load_config("spice-cpu", [f"model.compile={str(compile_).lower()}"])
            torch.manual_seed(0)
            gens[f"torsional spice-cpu{', compiled' if compile_ else ''}"] = Sampler(
                cfg, build_controller(cfg.model, "torsional"), torch.device("cpu"))
    for k, s in gens.items():  # warm-up (the compiled sampler compiles here)
        t0 = time.perf_counter()
        s.sample_graph(s.graph(picked[0][0]), 2, nfe=2)
        print(f"{k}: warm-up {time.perf_counter() - t0:.1f} s", flush=True)
    totals = {k: [0.0, 0] for k in ["etkdg", *gens]}
    for smiles, name in picked:
        dt, coords = run_etkdg(Chem.AddHs(Chem.MolFromSmiles(smiles)), args.n, 0, args.threads)
        totals["etkdg"][0] += dt
        totals["etkdg"][1] += len(coords)
        for k, s in gens.items():
            g_s, s_s, _, coords = run_sampler(s, smiles, name, args.n, 0, args.nfe)
            totals[k][0] += g_s + s_s
            totals[k][1] += len(coords)
    nfe = {k: (args.nfe or s.cfg.sde.eval_nfe) for k, s in gens.items()}
    return [(k, nfe.get(k, 0), c / sec, c) for k, (sec, c) in totals.items()]


def print_tables(rows: list[dict], rates) -> None:
    paths = ["plain", "fast", "fast bf16"]
    print("\n| controller | step | " + " | ".join(f"{p} ms" for p in paths) + " | "
          + " | ".join(f"plain / {p}" for p in paths[1:]) + " | saved for backward, MB (" + " / ".join(paths) + ") |")
    print("|---|---|" + "---:|" * (2 * len(paths) - 1) + "---:|")
    for r in rows:
        have = [p for p in paths if p in r]
        ms = " | ".join(f"{r[p] * 1e3:.0f}" if p in r else "-" for p in paths)
        ratio = " | ".join(f"{r['plain'] / r[p]:.2f}x" if p in r else "-" for p in paths[1:])
        mem = r.get("saved_MB")
        mem_s = " / ".join(f"{mem[p] / 2**20:.0f}" for p in have) if mem else "-"
        print(f"| {r['controller']} | {r['step']} | {ms} | {ratio} | {mem_s} |")
    if rates:
        etkdg = rates[0][2]
        print("\n| generator | NFE | conformers | conformers/s | / ETKDG |")
        print("|---|---:|---:|---:|---:|")
        for k, nfe, rate, c in rates:
            print(f"| {k} | {nfe or '-'} | {c} | {rate:.3f} | {rate / etkdg:.4f} |")
    print(f"\npeak resident set of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    picked = load_molecules(args.molecules, args.pick_seed)
    atoms = [Chem.AddHs(Chem.MolFromSmiles(s)).GetNumAtoms() for s, _ in picked]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {len(picked)} molecules "
          f"(pick seed {args.pick_seed}), {sum(atoms) / len(atoms):.1f} atoms on average: "
          + " ".join(n for _, n in picked), flush=True)
    schedule = GeometricSchedule()
    rows = bench_egnn(args, picked, schedule)
    print(f"EGNN done: {[(r['step'], round(r['plain'] / r['fast'], 2), round(r['plain'] / r['fast bf16'], 2)) for r in rows]}",
          flush=True)
    if not args.skip_torsional:
        rows += bench_torsional(args, picked, schedule)
    rates = bench_sampling_rate(args, picked) if args.sample_molecules > 0 else []
    print_tables(rows, rates)


if __name__ == "__main__":
    main()
