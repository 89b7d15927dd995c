"""Command line of the coverage benchmark: ``adjoint-sampling benchmark`` and ``python -m benchmark``.

    adjoint-sampling benchmark --method rdkit --references ../shared/data/spice --limit 5 --out /tmp/bench5

Both entry points share add_arguments and run. A method that cannot run at all (unknown method or
energy, unreadable checkpoint, missing sdf folder) or an unusable reference set ends with one
``error: ...`` line on stderr and exit status 2 before anything is written; a run that produces no
result for any method exits 1.
"""
from __future__ import annotations

import argparse
import sys
import time

from benchmark.methods import MethodError
from benchmark.references import ReferenceSetError, locate_reference_set
from benchmark.runner import BenchmarkConfig, run_benchmark


def _split(values) -> list[str]:
    out = []
    for v in values or []:
        out += [x.strip() for x in v.split(",") if x.strip()]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the benchmark options on ``parser``."""
    parser.add_argument("--method", action="append", default=None,
                        help="rdkit, rdkit+<energy> (e.g. rdkit+mmff), adjoint-sampling[+<energy>], sdf:<dir>[+<energy>]; "
                             "repeatable or comma separated (default: rdkit)")
    parser.add_argument("--references", help="directory with <name>.txt and <name>_conformers/ (e.g. shared/data/spice)")
    parser.add_argument("--reference-list", help="explicit SMILES list file ('count SMILES id' columns)")
    parser.add_argument("--conformer-dir", help="explicit folder of <id>/crest_conformers.xyz")
    parser.add_argument("--out", required=True, help="results directory (resumes if it holds earlier results)")
    parser.add_argument("--limit", type=int, help="benchmark only the first N molecules that have references")
    parser.add_argument("--ids", action="append", help="molecule ids to run (repeatable or comma separated)")
    parser.add_argument("--min-rot", type=int, help="minimum number of rotatable bonds")
    parser.add_argument("--max-rot", type=int, help="maximum number of rotatable bonds")
    parser.add_argument("--max-references", type=int, default=512,
                        help="cap on reference conformers per molecule (lowest energy / first; default 512)")
    parser.add_argument("--sample-factor", type=float, default=2.0, help="samples per reference conformer (default 2)")
    parser.add_argument("--checkpoint", help="Adjoint Sampling checkpoint for method adjoint-sampling "
                        "(default: the sampler shipped with the package)")
    parser.add_argument("--device", default="cpu", help="device for the sampler (default cpu)")
    parser.add_argument("--relax-energy", action="append",
                        help="also evaluate every listed method relaxed with this energy (adds '<method>+<energy>')")
    parser.add_argument("--fmax", type=float, default=0.05, help="relaxation force tolerance in eV/Å (default 0.05)")
    parser.add_argument("--relax-steps", type=int, default=500, help="maximum optimiser steps (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch and RDKit (0 = all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    methods = _split(args.method) or ["rdkit"]
    for energy in _split(args.relax_energy):
        methods += [f"{m}+{energy}" for m in list(methods) if "+" not in m.split(":")[-1]]
    return BenchmarkConfig(
        methods=list(dict.fromkeys(methods)), out_dir=args.out, max_references=args.max_references,
        sample_factor=args.sample_factor, seed=args.seed, fmax=args.fmax, relax_steps=args.relax_steps,
        checkpoint=args.checkpoint, device=args.device, threads=args.threads, limit=args.limit,
        ids=_split(args.ids) or None, min_rot=args.min_rot, max_rot=args.max_rot, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; prints the summary table. Returns a process exit code."""
    try:
        cfg = config_from_args(args)
        refset = locate_reference_set(args.references, args.reference_list, args.conformer_dir)
        t0 = time.perf_counter()
        result = run_benchmark(refset, cfg, log=lambda m: print(m, file=sys.stderr))
    except (ReferenceSetError, MethodError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result["markdown"], end="")
    print(f"{result['n_done']} molecules, total wall time {time.perf_counter() - t0:.1f} s; "
          f"results in {cfg.out_dir}")
    return 0 if result["summary"] else 1
