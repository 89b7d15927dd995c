"""Command-line interface: ``adjoint-sampling train | sample | benchmark | energies``.

Every user error ends with one line ``error: ...`` on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

DATA_DIR = Path(__file__).resolve().parent / "data"  # bundled molecule lists (package data)


class UserError(ValueError):
    """Bad input from the command line."""


# ---------------------------------------------------------------------- train
def _resolve_molecule_file(spec: str) -> Path:
    """A path, or ``bundled:NAME`` for a list shipped in the package (adjoint_sampling/data/NAME.txt)."""
    if spec.startswith("bundled:"):
        name = spec.split(":", 1)[1]
        path = DATA_DIR / f"{name}.txt"
        if not name.replace("-", "").replace("_", "").isalnum() or not path.is_file():
            known = ", ".join(sorted(p.stem for p in DATA_DIR.glob("*.txt")))
            raise UserError(f"unknown bundled molecule set '{spec}' (known: {known})")
        return path
    return Path(spec).expanduser()


def load_training_molecules(cfg, energy, seeds: Optional[list] = None) -> list:
    """Parse, validate and build graphs for every training molecule before anything is written.

    Torsional mode: each graph gets its rotatable bonds and seed conformers (``seeds``, a resumed
    checkpoint's, else seeded ETKDG); molecules without a rotatable bond are reported and left out.
    """
    from adjoint_sampling.graphs import check_elements, graph_from_smiles, read_molecule_list, with_torsions
    from adjoint_sampling.torsions import rotatable_torsions

    entries: list[tuple[str, str]] = []
    if cfg.data.molecules:
        entries += read_molecule_list(_resolve_molecule_file(cfg.data.molecules), cfg.data.limit)
    entries += [(s, s) for s in cfg.data.smiles]
    if not entries:
        raise UserError("no training molecules: set data.molecules=FILE or data.smiles=[SMILES,...]")
    from adjoint_sampling.graphs import InvalidMoleculeError
    from energies.base import UnsupportedMoleculeError

    graphs, skipped, rigid = [], 0, []
    tc = cfg.torsion
    for smiles, name in entries:
        try:
            g = graph_from_smiles(smiles, name=name, allow_fragments=cfg.data.allow_fragments, max_atoms=cfg.data.max_atoms)
            energy.check_supported(g.numbers.tolist(), g.charge, g.spin, name=g.name)
            check_elements(g, cfg.model.elements)
            if cfg.mode == "torsional":
                if rotatable_torsions(g.mol, tc.amides).count == 0:
                    rigid.append(g.name)
                    continue
                stored = seeds[len(graphs)] if seeds else None  # a checkpoint stores the trained molecules' seeds
                g = with_torsions(g, tc.seeds, tc.embed_seed, tc.relax_seeds, tc.amides, seed_coords=stored)
        except (InvalidMoleculeError, UnsupportedMoleculeError) as exc:
            if not cfg.data.skip_invalid:
                raise
            skipped += 1
            print(f"skipping {name}: {exc}", file=sys.stderr)
            continue
        graphs.append(g)
    if skipped:
        print(f"skipped {skipped} of {len(entries)} molecules (data.skip_invalid=true)", file=sys.stderr)
    if rigid:
        print(f"{len(rigid)} molecule(s) have no rotatable bond and are not trained on (sampling returns their "
              f"seed conformers): {', '.join(rigid[:5])}{' ...' if len(rigid) > 5 else ''}", file=sys.stderr)
    if not graphs:
        raise UserError("no usable training molecules" + (" (none has a rotatable bond)" if rigid else ""))
    return graphs


def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    from adjoint_sampling.trainer import CHECKPOINT_NAME

    if resume:
        return
    if (run_dir / CHECKPOINT_NAME).exists():
        raise UserError(f"run directory {run_dir} already holds a checkpoint: pass --resume to continue it or choose another run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)


RESUME_OVERRIDABLE = ("train.epochs", "train.max_minutes", "train.eval_every", "train.checkpoint_every", "energy.workers")


def _resumed_config(state: dict, overrides: list):
    """The checkpoint's config; only run-length keys may be overridden when resuming."""
    from adjoint_sampling.config import config_from_dict, set_key
    import yaml

    cfg = config_from_dict(state["config"])
    for item in overrides:
        key, _, raw = item.partition("=")
        if key in RESUME_OVERRIDABLE:
            set_key(cfg, key, yaml.safe_load(raw))
    return cfg


def _set_cpu_threads(n: int) -> None:
    import torch

    if n > 0:
        torch.set_num_threads(n)


def _split_overrides(items: list) -> tuple[list, list]:
    """Separate ``section.key=value`` items from SMILES (which may contain '=' themselves)."""
    import dataclasses
    import re

    from adjoint_sampling.config import Config

    sections = "|".join(f.name for f in dataclasses.fields(Config))
    pattern = re.compile(rf"^({sections})(\.[A-Za-z_][\w.]*)?=")
    overrides = [i for i in items if pattern.match(i)]
    return [i for i in items if not pattern.match(i)], overrides


def cmd_train(args) -> int:
    import yaml

    from adjoint_sampling.config import load_config, to_dict
    from adjoint_sampling.trainer import Trainer, resume_state, setup_distributed, teardown_distributed
    from energies import make_energy

    overrides = list(args.overrides)
    if args.smiles:  # `--smiles A B key=value`: argparse hands the overrides to --smiles
        args.smiles, extra = _split_overrides(args.smiles)
        overrides += extra
    if args.molecules:
        overrides.append(f"data.molecules={args.molecules}")
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    cfg = load_config(args.preset, overrides)
    if args.smiles:  # SMILES given on the command line replace the preset's molecule set
        cfg.data.molecules = None if not args.molecules else cfg.data.molecules
        cfg.data.smiles = list(args.smiles)
    run_dir = Path(args.resume) if args.resume else Path(cfg.run_dir)
    state = None
    if args.resume:
        state = resume_state(run_dir)
        cfg = _resumed_config(state, overrides)
    ctx = setup_distributed()
    _set_cpu_threads(cfg.train.cpu_threads)
    energy = make_energy(cfg.energy)
    trainer = None
    try:
        molecules = load_training_molecules(cfg, energy, seeds=state.get("seeds") if state else None)
        _prepare_run_dir(run_dir, resume=bool(args.resume))
        if ctx.enabled:  # every rank has validated the run dir before any rank writes to it
            import torch.distributed as dist

            dist.barrier()
        if ctx.is_main and not args.resume:
            (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        trainer = Trainer(cfg, molecules, energy, run_dir, ctx=ctx, show_progress=not args.no_progress)
        if state is not None:
            trainer.load_state_dict(state)
            if ctx.is_main:
                print(f"resuming {run_dir} at epoch {trainer.epoch}/{cfg.train.epochs}", flush=True)
        elif ctx.is_main:
            print(f"training on {len(molecules)} molecules with energy '{cfg.energy.name}' -> {run_dir}", flush=True)
        last = trainer.fit()
        if ctx.is_main and last:
            summary = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items())
            print(f"epoch {trainer.epoch}: {summary}", flush=True)
            print(f"checkpoint: {run_dir / 'checkpoint.pt'}", flush=True)
        if ctx.is_main and cfg.sample.smiles and cfg.sample.n > 0:
            out = Path(cfg.sample.out)
            out = out if out.is_absolute() else run_dir / out
            _sample_to_file(run_dir / "checkpoint.pt", [(cfg.sample.smiles, cfg.sample.smiles)], cfg.sample.n, out,
                            seed=cfg.sample.seed, nfe=None, energy=energy, device="cpu" if trainer.device.type == "cpu" else str(trainer.device))
    finally:
        energy.close()
        if ctx.enabled:
            trainer = None  # the DDP reducer must go before its process group
            teardown_distributed()
    return 0


# ---------------------------------------------------------------------- sample
def _sample_to_file(checkpoint, entries, n, out: Path, seed=0, nfe=None, energy=None, device="cpu", relax=False) -> None:
    from adjoint_sampling.energy_eval import energy_batch
    from adjoint_sampling.graphs import collate
    from adjoint_sampling.sampling import ConformerRecord, load_sampler, write_conformers

    import numpy as np
    import torch

    sampler = load_sampler(checkpoint, device=device)
    graphs = [sampler.graph(smi, name) for smi, name in entries]  # validate all before sampling any
    records = []
    for g in graphs:
        if sampler.cfg.mode == "torsional" and g.num_torsions == 0:
            print(f"{g.name}: no rotatable bond, writing its {len(g.seeds)} seed conformer(s) "
                  f"(torsion.seeds) cycled to {n}", file=sys.stderr)
        coords, log_rn = sampler.sample_graph(g, n, seed=seed, nfe=nfe, with_log_rn=True)
        energies, log_w = [None] * n, [None] * n
        if energy is not None:
            energy.check_supported(g.numbers.tolist(), g.charge, g.spin, name=g.name)
            batch = collate([g] * n, sampler.cfg.model.elements)
            x = torch.as_tensor(coords.reshape(-1, 3))
            if relax:
                from energies.relax import relax_conformers

                res = relax_conformers(energy, g.numbers.numpy(), coords, charge=g.charge, spin=g.spin, mol=g.mol)
                coords = np.asarray(res.coords)
                n_bad = int((~np.asarray(res.converged)).sum())
                if n_bad:
                    print(f"{g.name}: {n_bad}/{n} relaxations did not converge", file=sys.stderr)
                x = torch.as_tensor(coords.reshape(-1, 3))
            result = energy(energy_batch(batch, x))
            energies = [float(e) for e in result.energy]
            if not relax:  # relaxed conformers are no longer the sampler's paths: no weights for them
                log_w = _report_weights(sampler, g, coords, np.asarray(energies), log_rn)
        records += [ConformerRecord(g.name, g.smiles, g.mol, coords[k], energies[k], log_w[k]) for k in range(n)]
    stats = write_conformers(records, out)
    print(f"wrote {stats['written']} conformers to {out} ({stats['bad_connectivity']} with changed connectivity, "
          f"{stats['bad_stereo']} with changed stereochemistry)", flush=True)


def _report_weights(sampler, graph, coords, energies, log_rn) -> list:
    """Self-normalised log importance weights of one molecule's conformers; prints their ESS."""
    from adjoint_sampling.importance import effective_sample_size

    import numpy as np
    import torch

    if not np.isfinite(energies).any():
        return [None] * len(coords)
    lw = sampler.log_weights(graph, coords, energies, log_rn)
    ess = effective_sample_size(torch.as_tensor(lw))
    print(f"{graph.name}: importance ESS {ess:.1f} of {len(coords)} conformers "
          f"(weights against exp(-E/tau) at the checkpoint's tau = {sampler.cfg.loss.tau:g} eV)", flush=True)
    return [float(v) for v in lw]


def cmd_sample(args) -> int:
    from adjoint_sampling.graphs import read_molecule_list
    from energies import EnergyConfig, make_energy

    entries = []
    if args.smiles:
        entries += [(s, s) for s in args.smiles]
    if args.smiles_file:
        entries += read_molecule_list(args.smiles_file)
    if not entries:
        raise UserError("give --smiles SMILES or --smiles-file FILE")
    if args.n < 1:
        raise UserError(f"-n must be >= 1, got {args.n}")
    _set_cpu_threads(args.threads)
    energy = None
    if args.energy != "none":
        energy = make_energy(EnergyConfig(name=args.energy, workers=args.workers))
    elif args.relax:
        raise UserError("--relax needs an energy (--energy xtb|mmff|...)")
    try:
        _sample_to_file(args.checkpoint, entries, args.n, Path(args.output), seed=args.seed, nfe=args.nfe,
                        energy=energy, device=args.device, relax=args.relax)
    finally:
        if energy is not None:
            energy.close()
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adjoint-sampling", description="Adjoint Sampling of molecular conformers.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a sampler (YAML preset + key=value overrides)")
    t.add_argument("overrides", nargs="*", help="config overrides, e.g. train.epochs=10 energy=mmff")
    t.add_argument("--preset", default="quick", help="preset name (quick, spice, ...) or YAML path [quick]")
    t.add_argument("--molecules", help="molecule list file (plain or SPICE layout), or bundled:NAME")
    t.add_argument("--smiles", nargs="+", help="train on these SMILES instead of a list file")
    t.add_argument("--run-dir", help="output directory (default from the preset)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate conformers from a checkpoint")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--smiles", nargs="+")
    s.add_argument("--smiles-file", help="file of SMILES (plain or SPICE layout)")
    s.add_argument("-n", type=int, default=64, help="conformers per molecule [64]")
    s.add_argument("-o", "--output", default="samples.sdf", help="output .sdf or .xyz [samples.sdf]")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--nfe", type=int, default=None, help="integration steps (default: the checkpoint's eval NFE)")
    s.add_argument("--energy", default="none", help="energy to annotate samples with (xtb, mmff, ...); also writes each "
                   "conformer's log importance weight against exp(-E/tau) (log_weight) unless --relax [none]")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--relax", action="store_true", help="relax samples with --energy before writing")
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, default=1, help="torch CPU threads [1]")
    s.set_defaults(func=cmd_sample)

    import importlib

    for name, module, help_text in (
        ("benchmark", "benchmark.cli", "coverage benchmark against reference conformers"),
        ("energies", "energies.cli", "list available energy models"),
        ("eval-synthetic", "adjoint_sampling.synthetic_cli", "train and evaluate on DW-4 / LJ-13 against ground truth"),
        ("eval-torsional", "adjoint_sampling.torsional_cli",
         "train a torsional sampler on one molecule and score it against the exact torsional Boltzmann grid"),
    ):
        mod = importlib.import_module(module)
        sub_parser = sub.add_parser(name, help=help_text)
        mod.add_arguments(sub_parser)
        sub_parser.set_defaults(func=mod.run)
    return p


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from adjoint_sampling.checkpoint import CheckpointError
    from adjoint_sampling.config import ConfigError
    from adjoint_sampling.graphs import InvalidMoleculeError
    from energies.base import UnsupportedMoleculeError

    try:
        return int(args.func(args) or 0)
    except (UserError, ConfigError, CheckpointError, InvalidMoleculeError, UnsupportedMoleculeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
