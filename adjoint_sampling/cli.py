"""Command-line interface: ``adjoint-sampling train | sample | benchmark | energies``.

Every user error ends with one line ``error: ...`` on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from adjoint_sampling.checkpoint import CheckpointError
from adjoint_sampling.config import ConfigError
from adjoint_sampling.ensemble import DEFAULT_DEDUP_RMSD

DATA_DIR = Path(__file__).resolve().parent / "data"  # bundled molecule lists (package data)


DEFAULT_PRESET = "quick"


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
        if 0 < cfg.data.subset < len(entries):
            import random

            picks = sorted(random.Random(cfg.data.subset_seed).sample(range(len(entries)), cfg.data.subset))
            entries = [entries[i] for i in picks]
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
            energy.check_supported(g.numbers.tolist(), g.charge, g.spin, name=g.name, mol=g.mol)
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


RUN_FILES = ("checkpoint.pt", "config.yaml", "metrics.csv")  # what a run writes before its first checkpoint


def _checkpoint_id(path: Path) -> tuple:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _check_run_dir(run_dir: Path, resumed: Optional[tuple], lock_held: bool = False) -> None:
    """UserError unless training may write into run_dir (writes nothing).

    New run: refuse a directory holding a checkpoint or a run killed before its first checkpoint
    (config.yaml / metrics.csv without checkpoint.pt). Resume (``resumed``: the loaded checkpoint's
    ``_checkpoint_id``): refuse if the checkpoint changed since it was read (another process wrote it).
    Either: refuse while another process holds the run-directory lock (unless ``lock_held``: by us).
    """
    from adjoint_sampling.checkpoint import RunDirLock

    owner = None if lock_held else RunDirLock.holder(run_dir)
    if owner is not None:  # a live process trains here: neither a new run nor a resume may start
        raise UserError(RunDirLock.in_use_message(run_dir, owner))
    if resumed is not None:
        ck = run_dir / RUN_FILES[0]
        if not ck.is_file() or _checkpoint_id(ck) != resumed:
            raise UserError(f"{ck} changed while it was being read (another process wrote it): run the resume again")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"cannot create run directory {run_dir}: a file of that name exists")
    present = [name for name in RUN_FILES if (run_dir / name).exists()]
    if RUN_FILES[0] in present:
        raise UserError(f"run directory {run_dir} already holds a checkpoint: pass --resume to continue it "
                        "or choose another run_dir")
    if present:
        raise UserError(f"run directory {run_dir} holds a run stopped before its first checkpoint "
                        f"({', '.join(present)}), which cannot be resumed: remove it or choose another run_dir")


def _lock_run_dir(run_dir: Path, resumed: Optional[tuple]):
    """Create (new run) and lock the run directory, then check again under the lock (another process
    may have started in it since the first check). A live process holding the lock is refused by
    RunDirLock; the lock of a killed one is gone with it."""
    from adjoint_sampling.checkpoint import RunDirLock

    _check_run_dir(run_dir, resumed)  # the common refusals leave even the lock file alone
    if resumed is None:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from None
    try:
        lock = RunDirLock(run_dir)
    except OSError as exc:
        raise UserError(f"cannot lock run directory {run_dir}: {exc.strerror or exc}") from None
    try:
        _check_run_dir(run_dir, resumed, lock_held=True)
    except BaseException:
        lock.release()
        raise
    return lock


def _prepare_run_dir(run_dir: Path, resumed: Optional[tuple], ctx):
    """The run-directory lock (held by rank 0 for the whole run; None on the other ranks). Every rank
    gets rank 0's verdict, so all of them stop with the same error."""
    error, lock = None, None
    if ctx.is_main:
        try:
            lock = _lock_run_dir(run_dir, resumed)
        except (UserError, CheckpointError) as exc:
            error = str(exc)
    if ctx.enabled:
        import torch.distributed as dist

        verdict = [error]
        dist.broadcast_object_list(verdict, src=0)
        error = verdict[0]
        dist.barrier()  # every rank has validated its input before any rank writes to the run dir
    if error:
        if lock is not None:
            lock.release()
        raise UserError(error)
    return lock


# keys a resume may change: how long and how the run goes on, not what it trains
# model.fast and model.compile change how the controller is computed, not the function it computes
RESUME_OVERRIDABLE = ("train.epochs", "train.max_minutes", "train.max_cpu_minutes", "train.eval_every",
                      "train.checkpoint_every", "train.cpu_threads", "energy.workers", "model.fast", "model.compile",
                      "sample.smiles", "sample.n", "sample.out", "sample.seed")


def _resumed_config(state: dict, overrides: list):
    """The checkpoint's config with the resumable overrides applied: (config, applied items).

    Any other key is refused (UserError naming them) unless it leaves the saved value as it is.
    """
    import copy

    from adjoint_sampling.config import config_from_dict, parse_override, set_key, to_dict, validate

    try:
        cfg = config_from_dict(state["config"])
    except ConfigError as exc:
        raise CheckpointError(f"the checkpoint's config is unusable: {exc}") from None
    applied, refused = [], []
    for item in overrides:
        key, value = parse_override(item)
        if key in RESUME_OVERRIDABLE:
            set_key(cfg, key, value)
            applied.append(item)
            continue
        probe = copy.deepcopy(cfg)
        set_key(probe, key, value)  # unknown keys and bad values fail as they would without --resume
        if to_dict(probe) != to_dict(cfg):
            refused.append(key)
        else:
            applied.append(f"{item} (the checkpoint's value)")
    if refused:
        raise UserError(f"--resume keeps the checkpoint's config: cannot change {', '.join(refused)} (a resume "
                        f"may set only {', '.join(RESUME_OVERRIDABLE)}); start a new run_dir to change the others")
    return validate(cfg), applied


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


def _make_energy(cfg):
    from energies import make_energy

    try:
        return make_energy(cfg)
    except ValueError as exc:  # unknown name, bad options
        raise UserError(str(exc).splitlines()[0]) from None


def _sample_output(cfg, run_dir: Path) -> Optional[Path]:
    """Where training writes its conformers afterwards (None: it does not), checked up front."""
    from adjoint_sampling.sampling import check_output_path

    if not (cfg.sample.smiles and cfg.sample.n > 0):
        return None
    out = Path(cfg.sample.out)
    return check_output_path(out if out.is_absolute() else run_dir / out)


def _train_config(args):
    """(config, run dir, checkpoint state or None, resume overrides applied, loaded checkpoint's id)."""
    from adjoint_sampling.config import load_config
    from adjoint_sampling.trainer import CHECKPOINT_NAME, resume_state

    overrides = list(args.overrides)
    if args.smiles:  # `--smiles A B key=value`: argparse hands the overrides to --smiles
        args.smiles, extra = _split_overrides(args.smiles)
        overrides += extra
    if args.resume:
        given = [flag for flag, value in (("--smiles", args.smiles), ("--molecules", args.molecules),
                                          ("--preset", args.preset), ("--run-dir", args.run_dir)) if value]
        if given:
            raise UserError(f"--resume continues the checkpoint's run (its molecules, config and directory): "
                            f"{', '.join(given)} cannot be used with it; start a new run_dir instead")
        run_dir = Path(args.resume)
        ck = run_dir / CHECKPOINT_NAME
        ident = _checkpoint_id(ck) if ck.is_file() else None
        state = resume_state(run_dir)
        cfg, applied = _resumed_config(state, overrides)
        return cfg, run_dir, state, applied, ident
    if args.molecules:
        overrides.append(f"data.molecules={args.molecules}")
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    cfg = load_config(args.preset or DEFAULT_PRESET, overrides)
    if args.smiles:  # SMILES given on the command line replace the preset's molecule set
        cfg.data.molecules = None if not args.molecules else cfg.data.molecules
        cfg.data.smiles = list(args.smiles)
    return cfg, Path(cfg.run_dir), None, [], None


def _check_sample_smiles(cfg, energy) -> None:
    """The molecule training samples at the end must be usable before training starts."""
    from adjoint_sampling.graphs import check_elements, graph_from_smiles

    if not (cfg.sample.smiles and cfg.sample.n > 0):
        return
    g = graph_from_smiles(cfg.sample.smiles, allow_fragments=cfg.data.allow_fragments, max_atoms=cfg.data.max_atoms)
    check_elements(g, cfg.model.elements)
    energy.check_supported(g.numbers.tolist(), g.charge, g.spin, name=g.name, mol=g.mol)


def cmd_train(args) -> int:
    import yaml

    from adjoint_sampling.config import to_dict
    from adjoint_sampling.checkpoint import load_checkpoint
    from adjoint_sampling.trainer import Trainer, setup_distributed, teardown_distributed

    cfg, run_dir, state, applied, ident = _train_config(args)
    if args.init_from and args.resume:
        raise UserError("--init-from starts a new run from a model; --resume continues a run: use one of them")
    # under torchrun only rank 0 takes the lock: the others must not mistake it for another run's
    _check_run_dir(run_dir, ident if state is not None else None, lock_held=int(os.environ.get("RANK", "0")) != 0)
    sample_out = _sample_output(cfg, run_dir)
    ctx = setup_distributed()
    _set_cpu_threads(cfg.train.cpu_threads)
    energy = _make_energy(cfg.energy)
    trainer = lock = None
    try:
        molecules = load_training_molecules(cfg, energy, seeds=state.get("seeds") if state else None)
        _check_sample_smiles(cfg, energy)
        trainer = Trainer(cfg, molecules, energy, run_dir, ctx=ctx, show_progress=not args.no_progress)
        if state is not None:
            trainer.load_state_dict(state)  # a checkpoint that does not fit is refused before any write
        elif args.init_from:
            trainer.init_from(load_checkpoint(args.init_from))
        lock = _prepare_run_dir(run_dir, ident if state is not None else None, ctx)  # first write: the run dir
        if ctx.is_main and state is None:
            (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        if state is not None:
            if ctx.is_main:
                print(f"resuming {run_dir} at epoch {trainer.epoch}/{cfg.train.epochs}"
                      + (f" with {' '.join(applied)}" if applied else ""), flush=True)
        elif ctx.is_main:
            print(f"training on {len(molecules)} molecules with energy '{cfg.energy.name}' -> {run_dir}", flush=True)
        last = trainer.fit()
        if ctx.is_main and last:
            summary = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items())
            print(f"epoch {trainer.epoch}: {summary}", flush=True)
            print(f"checkpoint: {run_dir / 'checkpoint.pt'}", flush=True)
        if ctx.is_main and sample_out is not None:
            _sample_to_file(run_dir / "checkpoint.pt", [(cfg.sample.smiles, cfg.sample.smiles)], cfg.sample.n,
                            sample_out, seed=cfg.sample.seed, nfe=None, energy=energy,
                            device="cpu" if trainer.device.type == "cpu" else str(trainer.device),
                            progress=not args.no_progress)
    finally:
        energy.close()
        if lock is not None:
            lock.release()
        if ctx.enabled:
            trainer = None  # the DDP reducer must go before its process group
            teardown_distributed()
    return 0


# ---------------------------------------------------------------------- sample
DEFAULT_MAX_ATOMS = 200  # `sample --max-atoms`: larger molecules run for many minutes on a CPU


def _chunk_seed(seed: int, j: int) -> int:
    """The noise seed of conformer batch j of a molecule: batch 0 uses ``seed`` itself (so n up to one
    batch draws what ``Sampler.sample_graph(seed=seed)`` draws); later batches get seeds derived from
    (seed, j), never another --seed's."""
    import numpy as np

    return seed if j == 0 else int(np.random.SeedSequence([seed % 2**64, j]).generate_state(1)[0])


@dataclass
class EnsembleOptions:
    """How ``sample --relax`` turns relaxed samples into an ensemble: dedup_rmsd in Å (heavy atoms;
    0: no dedup), ewin in eV above the minimum (None: no window), tau in eV for the populations
    (None: the checkpoint's loss.tau)."""

    dedup_rmsd: float = DEFAULT_DEDUP_RMSD
    ewin: Optional[float] = None
    tau: Optional[float] = None


def _sample_to_file(checkpoint, entries, n, out: Path, seed=0, nfe=None, energy=None, device="cpu", relax=False,
                    ensemble: Optional[EnsembleOptions] = None, max_atoms: int = DEFAULT_MAX_ATOMS,
                    batch_size: int = 64, progress: bool = True, compile: bool = False) -> None:
    """Sample n conformers per (SMILES, name) entry and write them to ``out`` (compile: see load_sampler).

    With ``energy`` each conformer carries its energy (eV) and importance weight; with ``relax`` too,
    the samples are relaxed with ``energy`` and written as an ensemble (``ensemble`` options): valid
    unique minima, lowest first, with populations, plus ``<out stem>.ensemble.csv``.
    """
    from adjoint_sampling.graphs import mol_from_smiles
    from adjoint_sampling.sampling import check_output_path, load_sampler, write_conformers
    from tqdm.auto import tqdm

    out = check_output_path(out)
    sampler = load_sampler(checkpoint, device=device, compile=compile)
    for smi, name in entries:  # the atom limit first: building a large torsional graph embeds seeds
        atoms = mol_from_smiles(smi, allow_fragments=sampler.cfg.data.allow_fragments).GetNumAtoms()
        if max_atoms and atoms > max_atoms:
            raise UserError(f"molecule '{name}' has {atoms} atoms (with hydrogens), more than --max-atoms={max_atoms}")
    graphs = [sampler.graph(smi, name) for smi, name in entries]  # validate all before sampling any
    if energy is not None:
        for g in graphs:
            energy.check_supported(g.numbers.tolist(), g.charge, g.spin, name=g.name, mol=g.mol)
    if relax:
        ensemble = ensemble or EnsembleOptions()
        tau = _ensemble_tau(sampler, ensemble)
    # conformers per batch: a multiple of the seed-conformer count, so copy k keeps seed k mod K across batches
    chunks = [-(-batch_size // len(g.seeds)) * len(g.seeds) if g.seeds is not None else batch_size for g in graphs]
    bar = tqdm(total=sum(-(-n // c) for c in chunks), desc="sample", unit="batch", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    records, rows = [], []
    for g, chunk in zip(graphs, chunks):
        if sampler.cfg.mode == "torsional" and g.num_torsions == 0:
            bar.write(f"{g.name}: no rotatable bond, writing its {len(g.seeds)} seed conformer(s) "
                      f"(torsion.seeds) cycled to {n}", file=sys.stderr)
        bar.set_postfix(molecule=g.name[:30], atoms=g.num_atoms)
        coords, log_rn = _draw(sampler, g, n, chunk, seed, nfe, bar)
        if relax:
            recs, members = _relaxed_ensemble(energy, g, coords, ensemble, tau, bar)
            records += recs
            rows += [(g.name, m) for m in members]
        else:
            records += _annotated(sampler, energy, g, coords, log_rn)
    bar.close()
    stats = write_conformers(records, out)
    print(f"wrote {stats['written']} conformers to {out} ({stats['bad_connectivity']} with changed connectivity, "
          f"{stats['bad_stereo']} with changed stereochemistry)", flush=True)
    if relax:
        from adjoint_sampling.ensemble import ensemble_csv_path, write_ensemble_csv

        table = ensemble_csv_path(out)
        write_ensemble_csv(rows, table)
        print(f"ensemble table: {table}", flush=True)


def _draw(sampler, g, n, chunk, seed, nfe, bar):
    """n conformers of graph g (coords [n, N, 3] Å) and their path log-RN terms, in batches of chunk."""
    import numpy as np

    parts = []
    for j, start in enumerate(range(0, n, chunk)):
        parts.append(sampler.sample_graph(g, min(chunk, n - start), seed=_chunk_seed(seed, j), nfe=nfe,
                                          batch_size=chunk, with_log_rn=True))
        bar.update(1)
    return np.concatenate([c for c, _ in parts]), np.concatenate([lr for _, lr in parts])


def _annotated(sampler, energy, g, coords, log_rn) -> list:
    """The raw samples as records, with energies (eV) and importance weights when an energy is given."""
    from adjoint_sampling.energy_eval import energy_batch
    from adjoint_sampling.graphs import collate
    from adjoint_sampling.sampling import ConformerRecord

    import numpy as np
    import torch

    n = len(coords)
    energies, log_w = [None] * n, [None] * n
    if energy is not None:
        batch = collate([g] * n, sampler.cfg.model.elements)
        result = energy(energy_batch(batch, torch.as_tensor(coords.reshape(-1, 3))))
        energies = [float(e) for e in result.energy]
        log_w = _report_weights(sampler, g, coords, np.asarray(energies), log_rn)
    return [ConformerRecord(g.name, g.smiles, g.mol, coords[k], energies[k], log_w[k]) for k in range(n)]


def _ensemble_tau(sampler, opts: EnsembleOptions) -> float:
    """τ (eV) of the populations: --tau, else the checkpoint's loss.tau (the density it was trained on)."""
    from adjoint_sampling.ensemble import temperature_k

    tau, source = (opts.tau, "--tau") if opts.tau is not None else (sampler.cfg.loss.tau, "the checkpoint's loss.tau")
    print(f"Boltzmann populations at tau = {tau:g} eV ({source}; T = tau/k_B = {temperature_k(tau):.1f} K)",
          file=sys.stderr, flush=True)
    return float(tau)


def _relaxed_ensemble(energy, g, coords, opts: EnsembleOptions, tau: float, bar) -> tuple[list, list]:
    """Relax one molecule's samples with ``energy``; (records, ensemble Members), lowest energy first.

    Relaxed conformers are no longer the sampler's paths: they carry no importance weights.
    """
    from adjoint_sampling.ensemble import build_ensemble, valid_conformers
    from adjoint_sampling.sampling import ConformerRecord
    from energies.relax import relax_conformers

    import numpy as np

    res = relax_conformers(energy, g.numbers.numpy(), coords, charge=g.charge, spin=g.spin, mol=g.mol)
    relaxed, energies = np.asarray(res.coords), np.asarray(res.energies, dtype=np.float64)
    converged = np.asarray(res.converged, dtype=bool) & np.isfinite(energies)
    valid = valid_conformers(g.mol, relaxed, energies, converged)
    members = build_ensemble(g.mol, relaxed, energies, tau, dedup_rmsd=opts.dedup_rmsd, ewin=opts.ewin, valid=valid)
    window = "" if opts.ewin is None else f" within {opts.ewin:g} eV,"
    dedup = f"unique at {opts.dedup_rmsd:g} Å heavy-atom RMSD" if opts.dedup_rmsd > 0 else "kept (no dedup)"
    bar.write(f"{g.name}: {int(valid.sum())}/{len(coords)} relaxed to valid minima ({int((~converged).sum())} failed "
              f"or unconverged, {int((converged & ~valid).sum())} with changed connectivity/stereo),{window} "
              f"{len(members)} {dedup}", file=sys.stderr)
    records = [ConformerRecord(g.name, g.smiles, g.mol, relaxed[m.sample_index], m.energy, None, _member_props(m))
               for m in members]
    return records, members


def _member_props(m) -> dict:
    """What each ensemble conformer carries in the SDF (properties) and XYZ (comment line)."""
    return {"rank": str(m.rank), "sample_index": str(m.sample_index), "rel_energy_eV": f"{m.rel_energy:.6f}",
            "rel_energy_kcal_mol": f"{m.rel_energy_kcal_mol:.4f}", "population": f"{m.population:.8g}"}


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


def _relax_energy(args) -> Optional[str]:
    """The energy ``--relax`` names (None: no relaxation). A bare --relax means --energy's, as it
    did before --relax took a name."""
    if args.relax is None:
        return None
    name = args.relax or (None if args.energy == "none" else args.energy)
    if name is None:
        raise UserError("--relax needs an energy: --relax xtb|mmff|... (or --energy NAME with a bare --relax)")
    if args.energy not in ("none", name):  # one energy ranks the minima it made: no mixed levels
        raise UserError(f"--relax {name} and --energy {args.energy} name different energies; the ensemble is "
                        "ranked by the relaxation energy: give one of them")
    return name


def _ensemble_options(args, relaxing: bool) -> Optional[EnsembleOptions]:
    """--dedup-rmsd / --ewin / --tau, checked; they shape the relaxed ensemble only."""
    import math

    given = [flag for flag, value in (("--dedup-rmsd", args.dedup_rmsd), ("--ewin", args.ewin), ("--tau", args.tau))
             if value is not None]
    if not relaxing:
        if given:
            raise UserError(f"--relax ENERGY is needed for {', '.join(given)} (they shape the relaxed ensemble)")
        return None
    for flag, value, positive in (("--dedup-rmsd", args.dedup_rmsd, False), ("--ewin", args.ewin, False),
                                  ("--tau", args.tau, True)):
        if value is not None and not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
            raise UserError(f"{flag} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
    return EnsembleOptions(dedup_rmsd=DEFAULT_DEDUP_RMSD if args.dedup_rmsd is None else args.dedup_rmsd,
                           ewin=args.ewin, tau=args.tau)


def _sample_checkpoint(args) -> Path:
    """--checkpoint, else the sampler shipped with the package (said on stderr)."""
    if args.checkpoint:
        return Path(args.checkpoint)
    from adjoint_sampling.pretrained import describe_shipped, shipped_checkpoint

    path = shipped_checkpoint()  # ShippedSamplerMissing (a FileNotFoundError): one error line, exit 2
    print(f"using the shipped sampler {path} ({describe_shipped()})", file=sys.stderr, flush=True)
    return path


def cmd_sample(args) -> int:
    from adjoint_sampling.graphs import read_molecule_list
    from adjoint_sampling.sampling import check_output_path
    from energies import EnergyConfig

    for flag, value, low in (("-n", args.n, 1), ("--nfe", args.nfe, 1), ("--batch-size", args.batch_size, 1),
                             ("--max-atoms", args.max_atoms, 0), ("--workers", args.workers, 1)):
        if value is not None and value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    relax = _relax_energy(args)
    ensemble = _ensemble_options(args, relax is not None)
    entries = []
    if args.smiles:
        entries += [(s, s) for s in args.smiles]
    if args.smiles_file:
        entries += read_molecule_list(args.smiles_file)
    if not entries:
        raise UserError("give --smiles SMILES or --smiles-file FILE")
    out = check_output_path(args.output)  # before minutes of sampling, not after
    checkpoint = _sample_checkpoint(args)
    _set_cpu_threads(args.threads)
    name = relax or args.energy
    energy = None if name == "none" else _make_energy(EnergyConfig(name=name, workers=args.workers))
    try:
        _sample_to_file(checkpoint, entries, args.n, out, seed=args.seed, nfe=args.nfe, energy=energy,
                        device=args.device, relax=relax is not None, ensemble=ensemble, max_atoms=args.max_atoms,
                        batch_size=args.batch_size, progress=not args.no_progress, compile=args.compile)
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
    t.add_argument("--preset", help=f"preset name (quick, spice, ...) or YAML path [{DEFAULT_PRESET}]")
    t.add_argument("--molecules", help="molecule list file (plain or SPICE layout), or bundled:NAME")
    t.add_argument("--smiles", nargs="+", help="train on these SMILES instead of a list file")
    t.add_argument("--run-dir", help="output directory (default from the preset)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    t.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start Adjoint Sampling from this checkpoint's model (e.g. a warm start's pretrained.pt); "
                        "no warm start, a fresh buffer and optimizer")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate conformers from a checkpoint (default: the shipped sampler)")
    s.add_argument("--checkpoint", help="a trained checkpoint.pt (default: the sampler shipped with the package)")
    s.add_argument("--smiles", nargs="+")
    s.add_argument("--smiles-file", help="file of SMILES (plain or SPICE layout)")
    s.add_argument("-n", type=int, default=64, help="conformers per molecule [64]")
    s.add_argument("-o", "--output", default="samples.sdf", help="output .sdf or .xyz [samples.sdf]")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--nfe", type=int, default=None, help="integration steps (default: the checkpoint's eval NFE)")
    s.add_argument("--energy", default="none", help="energy to annotate samples with (xtb, mmff, ...); also writes each "
                   "conformer's log importance weight against exp(-E/tau) (log_weight) unless --relax [none]")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--relax", nargs="?", const="", default=None, metavar="ENERGY",
                   help="relax the samples with ENERGY (xtb, mmff, ...; bare --relax: --energy's) and write the "
                        "ensemble: valid unique minima, lowest energy first, with Boltzmann populations, plus "
                        "<output stem>.ensemble.csv")
    s.add_argument("--dedup-rmsd", type=float, default=None, metavar="Å",
                   help="with --relax: drop a minimum within this heavy-atom RMSD of a lower one (0: keep all) "
                        f"[{DEFAULT_DEDUP_RMSD:g}]")
    s.add_argument("--ewin", type=float, default=None, metavar="eV",
                   help="with --relax: keep minima at most this far above the lowest [no window]")
    s.add_argument("--tau", type=float, default=None, metavar="eV",
                   help="with --relax: kT of the populations exp(-dE/tau) [the checkpoint's loss.tau]")
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, default=1, help="torch CPU threads [1]")
    s.add_argument("--max-atoms", type=int, default=DEFAULT_MAX_ATOMS,
                   help=f"refuse molecules with more atoms, hydrogens included (0: no limit) [{DEFAULT_MAX_ATOMS}]")
    s.add_argument("--batch-size", type=int, default=64, help="conformers integrated at once [64]")
    s.add_argument("--compile", action="store_true",
                   help="torch.compile a torsional sampler's network: up to a minute of compilation (needs a C++ "
                        "compiler), then ~1.7x the conformers/s; worth it for many conformers (ignored for Cartesian samplers)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (on stderr)")
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
    from adjoint_sampling.graphs import InvalidMoleculeError
    from adjoint_sampling.sampling import OutputPathError
    from energies.base import UnsupportedMoleculeError

    user_errors = (UserError, ConfigError, CheckpointError, InvalidMoleculeError, UnsupportedMoleculeError,
                   OutputPathError, FileNotFoundError)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        # only `train` loads the trainer: inference commands never import training code
        trainer = sys.modules.get("adjoint_sampling.trainer")
        if isinstance(exc, user_errors) or (trainer is not None and isinstance(exc, trainer.TrainingError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
