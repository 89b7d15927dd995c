"""``adjoint-sampling eval-synthetic``: train on DW-4 or LJ-13, sample, and score against ground truth.

Writes into --out: checkpoint.pt and metrics.csv (trainer), samples.npy (trained sampler, rows =
samples, ground-truth layout), base_samples.npy (untrained base process), metrics.json and
histograms.png; prints the metric table (sampler | untrained base | floor val-vs-test | published AS).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from adjoint_sampling.shared_data import synthetic_data_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", choices=("dw4", "lj13"), default="dw4", help="benchmark system (default dw4)")
    p.add_argument("--preset", default=None, help="config preset name or YAML path (default: the system name)")
    p.add_argument("--out", default=None, help="output folder (default runs/synthetic-<system>)")
    p.add_argument("--data", default=str(synthetic_data_dir()),
                   help="folder of the ground-truth .npy splits (default: data/synthetic in the shared folder, "
                        "$ADJOINT_SAMPLING_SHARED or else ../shared beside the repository: %(default)s)")
    p.add_argument("--n-samples", type=int, default=2000, help="samples drawn and compared (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling and of the reference subsets")
    p.add_argument("--checkpoint", default=None, help="evaluate this trained checkpoint instead of training")
    p.add_argument("--resume", action="store_true", help="continue training from <out>/checkpoint.pt")
    p.add_argument("--no-plot", action="store_true", help="skip the histogram PNG")
    p.add_argument("--lr-final-frac", type=float, default=0.05,
                   help="cosine-decay the learning rate to this fraction of train.lr by the end of the run "
                        "(last epoch, or train.max_minutes if that comes first; 1 = constant)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: these graphs are tiny, extra threads only add overhead)")
    p.add_argument("--procs", type=int, default=1,
                   help="training processes (DDP over gloo, one CPU core each; samples and batches split across them)")
    p.add_argument("--exact-buffer", type=int, default=0, metavar="N",
                   help="diagnostic: train only on N ground-truth samples of the train split (val if none; exact RAM "
                        "targets, no resimulation), to separate the regression from the outer loop")
    p.add_argument("--importance", type=int, default=0, metavar="K",
                   help="also report the sampler corrected by importance resampling: draw K x --n-samples paths, "
                        "weight each by log dP*/dP^u (exact for the simulated chain) and resample --n-samples of "
                        "them; the first --n-samples paths are the plain sampler's (default 0: off)")
    p.add_argument("--progress", action="store_true", help="show a training progress bar")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. train.epochs=50")


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from adjoint_sampling.checkpoint import CheckpointError, load_checkpoint
    from adjoint_sampling.config import ConfigError, load_config
    from adjoint_sampling.synthetic import SyntheticError
    from benchmark.synthetic import MetricError
    from energies.synthetic import SyntheticEnergyError

    try:
        return _run(args, load_config, load_checkpoint)
    except (SyntheticError, MetricError, SyntheticEnergyError, ConfigError, CheckpointError) as exc:
        return _error(str(exc))


def _run(args, load_config, load_checkpoint) -> int:
    from adjoint_sampling.synthetic import (SyntheticError, draw_samples, draw_weighted_samples, get_system,
                                            load_split, make_trainer)
    from adjoint_sampling.trainer import resume_state
    from benchmark.synthetic import comparison_table, plot_histograms, sample_metrics, subsample

    import torch

    system = get_system(args.system)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.n_samples < 2:
        raise SyntheticError(f"--n-samples must be at least 2, got {args.n_samples}")
    cfg = load_config(args.preset or system.name, args.overrides)
    out = Path(args.out or f"runs/synthetic-{system.name}")
    cfg.run_dir = str(out)
    # read the ground truth first: a wrong --data should fail before minutes of training
    reference = subsample(load_split(system, "test", args.data), args.n_samples, args.seed)
    floor_set = subsample(load_split(system, "val", args.data), args.n_samples, args.seed + 1)
    out.mkdir(parents=True, exist_ok=True)

    if args.importance < 0 or args.importance == 1:
        raise SyntheticError(f"--importance takes K >= 2 candidate paths per sample (or 0: off), got {args.importance}")
    if args.procs < 1:
        raise SyntheticError(f"--procs must be at least 1, got {args.procs}")
    if args.exact_buffer < 0 or (args.exact_buffer and (args.procs > 1 or args.checkpoint)):
        raise SyntheticError("--exact-buffer takes N >= 1 samples and works with one process, without --checkpoint")
    trainer = make_trainer(cfg, system.name, out, show_progress=args.progress, lr_final_frac=args.lr_final_frac)
    t0 = time.time()
    if args.checkpoint:
        trainer.load_state_dict(load_checkpoint(args.checkpoint))
        train_s = 0.0
    elif args.procs > 1:
        _train_distributed(args, cfg, system.name, out)
        train_s = time.time() - t0
        trainer.load_state_dict(load_checkpoint(out / "checkpoint.pt"))
    else:
        if args.resume:
            trainer.load_state_dict(resume_state(out))
        if args.exact_buffer:
            # LJ-13 ships no train split: the val split stands in (the metrics use the test split)
            split = "train" if (Path(args.data) / f"train_split_{system.file_tag}.npy").is_file() else "val"
            kept = trainer.use_exact_buffer(load_split(system, split, args.data)[: args.exact_buffer])
            print(f"{system.name}: exact buffer of {kept} ground-truth samples ({split} split), no resimulation")
        trainer.fit()
        train_s = time.time() - t0
    print(f"{system.name}: trained {trainer.epoch} epochs in {train_s:.1f} s")

    t1 = time.time()
    importance = None
    if args.importance:
        # the first n candidates are exactly the plain sampler's draw (same seed); the rest use the next seed
        samples, log_w = draw_weighted_samples(cfg, system.name, args.n_samples, trainer.model, seed=args.seed)
        more, more_w = draw_weighted_samples(cfg, system.name, (args.importance - 1) * args.n_samples,
                                             trainer.model, seed=args.seed + 1)
        candidates, log_w = np.concatenate([samples, more]), np.concatenate([log_w, more_w])
        reweighted, importance = _importance_resample(candidates, log_w, args.n_samples, args.seed)
        np.save(out / "samples_reweighted.npy", reweighted)
        np.save(out / "candidate_log_weights.npy", log_w)
    else:
        samples = draw_samples(cfg, system.name, args.n_samples, trainer.model, seed=args.seed)
    sample_s = time.time() - t1
    base = draw_samples(cfg, system.name, args.n_samples, None, seed=args.seed)
    np.save(out / "samples.npy", samples)
    np.save(out / "base_samples.npy", base)

    opts = cfg.energy.options
    columns = {"sampler": sample_metrics(samples, reference, system, opts)}
    if importance is not None:
        columns["sampler+IS"] = sample_metrics(reweighted, reference, system, opts)
    columns["untrained"] = sample_metrics(base, reference, system, opts)
    columns["floor(val)"] = sample_metrics(floor_set, reference, system, opts)
    published = {"energy_w2": system.published_energy_w2, "coordinate_w2": system.published_sample_w2}
    print(f"{system.name}: {args.n_samples} samples vs ground-truth test split ({sample_s:.1f} s to sample)")
    print(comparison_table(columns, published))
    print("published sample W2 uses an unstated convention; compare coordinate_w2 with the floor column")
    if importance is not None:
        print(f"sampler+IS: {args.n_samples} resampled from {importance['candidates']} weighted paths "
              f"(ESS {importance['ess']:.0f} = {100 * importance['ess_fraction']:.1f}%, "
              f"{importance['unique']} distinct); the published AS numbers are without importance weights")
    summary = {"system": system.name, "n_samples": args.n_samples, "epochs": trainer.epoch,
               "train_s": round(train_s, 1), "sample_s": round(sample_s, 1), "metrics": columns,
               "published": published, "overrides": list(args.overrides),
               "exact_buffer": args.exact_buffer, "importance": importance}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    if not args.no_plot:
        shown = {"sampler": samples, "untrained base": base}
        if importance is not None:
            shown["sampler + importance resampling"] = reweighted
        png = plot_histograms(out / "histograms.png", system, reference, shown, opts)
        print(f"wrote {out / 'samples.npy'}, {out / 'metrics.json'}, {png}")
    return 0


def _importance_resample(candidates: np.ndarray, log_w: np.ndarray, n: int, seed: int):
    """(n rows resampled ∝ w from the candidates, summary dict with the ESS and the number of distinct rows)."""
    import torch

    from adjoint_sampling.importance import effective_sample_size, systematic_resample

    lw = torch.as_tensor(log_w)
    idx = systematic_resample(lw, n, torch.Generator().manual_seed(seed)).numpy()
    ess = effective_sample_size(lw)
    summary = {"candidates": len(candidates), "ess": round(ess, 1), "ess_fraction": round(ess / len(candidates), 4),
               "unique": int(len(np.unique(idx)))}
    return candidates[idx], summary


def _train_distributed(args, cfg, system: str, out: Path) -> None:
    """Train with args.procs DDP processes (gloo); rank 0 writes <out>/checkpoint.pt."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{Path(tmp) / 'rendezvous'}"
        mp.spawn(_distributed_worker, args=(args.procs, init, cfg, system, str(out), args), nprocs=args.procs, join=True)


def _distributed_worker(rank: int, world: int, init: str, cfg, system: str, out: str, args) -> None:
    import torch
    import torch.distributed as dist

    from adjoint_sampling.synthetic import make_trainer
    from adjoint_sampling.trainer import DistContext, resume_state, teardown_distributed

    torch.set_num_threads(max(args.threads, 1))
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    trainer = make_trainer(cfg, system, out, show_progress=args.progress, lr_final_frac=args.lr_final_frac,
                           ctx=DistContext(rank, world))
    try:
        if args.resume:
            trainer.load_state_dict(resume_state(out))
        trainer.fit()
    finally:
        trainer = None  # the DDP reducer must go before its process group
        teardown_distributed()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="eval-synthetic", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
