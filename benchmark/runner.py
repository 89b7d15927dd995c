"""Run the coverage benchmark molecule by molecule, resumably, and write the reports.

Layout of the results directory:
  molecules/<id>.json   one file per molecule, written after the molecule finishes (resume key)
  metrics.csv           one row per (method, threshold)
  coverage.png          coverage vs threshold, all methods
  summary.md            table at 0.75 / 1.0 / 1.25 Å (also printed)
  messages.txt          skipped molecules/methods and reference-file problems, with reasons
  config.json           the settings of the last run and the inputs of each method

Resume: a stored molecule is reused only when its settings (max_references, sample_factor, seed),
SMILES and reference file content (sha256) are unchanged; a stored method only when its inputs are
unchanged too (generator cache_key: checkpoint sha256 and device, sdf file sha256, RDKit version;
relaxation energy, fmax and steps). Anything else is recomputed.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from rdkit.Chem import rdMolDescriptors

from benchmark.mapping import InvalidSmilesError, MoleculeTemplate, check_conformers
from benchmark.methods import (GeneratedSamples, MethodError, MethodSkip, MethodSpec, build_generator,
                               file_sha256, parse_method, relax_samples)
from benchmark.metrics import coverage_metrics
from benchmark.references import (MoleculeEntry, ReferenceSet, iter_available, read_xyz, select_references)
from benchmark.report import collect, plot_coverage, summary_markdown, write_csv
from benchmark.rmsd import heavy_atom_automorphisms, rmsd_matrix

RESULT_VERSION = 2  # 2: method records carry their inputs, molecules their reference hash


@dataclass
class BenchmarkConfig:
    """Settings of one benchmark run. fmax in eV/Å, thresholds in Å."""

    methods: list[str]
    out_dir: str
    max_references: int = 512
    sample_factor: float = 2.0
    seed: int = 0
    fmax: float = 0.05
    relax_steps: int = 500
    checkpoint: Optional[str] = None
    device: str = "cpu"
    threads: int = 0
    limit: Optional[int] = None
    ids: Optional[list[str]] = None
    min_rot: Optional[int] = None
    max_rot: Optional[int] = None
    progress: bool = True

    def fingerprint(self) -> dict:
        """Settings that change every method's results: a stored molecule with other values is recomputed."""
        return {"max_references": self.max_references, "sample_factor": self.sample_factor, "seed": self.seed,
                "version": RESULT_VERSION}


class MoleculeSkip(Exception):
    """The molecule cannot be benchmarked (reason in the message)."""


@dataclass
class References:
    heavy_coords: np.ndarray  # [nR, n_heavy, 3] Å in SMILES order
    n_read: int
    n_kept: int
    n_unmapped: int
    n_wrong_stereo: int
    problems: list = field(default_factory=list)


def _rotatable_bonds(entry: MoleculeEntry) -> Optional[int]:
    if entry.rotatable_bonds is not None:
        return entry.rotatable_bonds
    try:
        return rdMolDescriptors.CalcNumRotatableBonds(MoleculeTemplate.from_smiles(entry.smiles).mol)
    except InvalidSmilesError:
        return None


def select_molecules(refset: ReferenceSet, cfg: BenchmarkConfig, log: Callable[[str], None]) -> list[MoleculeEntry]:
    """Entries with a reference file that pass the id / rotatable-bond filters, then --limit."""
    entries, problems = refset.entries()
    for p in problems:
        log(p)
    if cfg.ids:
        wanted = set(cfg.ids)
        unknown = wanted - {e.mol_id for e in entries}
        for u in sorted(unknown):
            log(f"{u}: id not in {refset.list_file}; skipped")
        entries = [e for e in entries if e.mol_id in wanted]
    if cfg.min_rot is not None or cfg.max_rot is not None:
        lo = -1 if cfg.min_rot is None else cfg.min_rot
        hi = 10**9 if cfg.max_rot is None else cfg.max_rot
        entries = [e for e in entries if (r := _rotatable_bonds(e)) is not None and lo <= r <= hi]
    selected = []
    for entry, missing in iter_available(refset, entries):
        if missing:
            log(f"skip {missing}")
        else:
            selected.append(entry)
    return selected[: cfg.limit] if cfg.limit is not None else selected


def load_references(refset: ReferenceSet, entry: MoleculeEntry, template: MoleculeTemplate,
                    max_references: int) -> References:
    """Read, cap, map onto the SMILES order and check the reference conformers of one molecule."""
    read = read_xyz(refset.xyz_path(entry.mol_id))
    problems = list(read.problems)
    kept = select_references(read.blocks, max_references)
    mapped, reasons = [], {}
    for block in kept:
        coords, why = template.map_conformer(block.numbers, block.coords)
        if coords is None:
            reasons[why] = reasons.get(why, 0) + 1
        else:
            mapped.append(coords)
    for why, count in reasons.items():
        problems.append(f"{entry.mol_id}: {count} reference conformer(s) not used: {why}")
    if not mapped:
        detail = "; ".join(problems[-3:]) or "file holds no conformer blocks"
        raise MoleculeSkip(f"{entry.mol_id}: no usable reference conformers ({detail})")
    full = np.stack(mapped)
    _, stereo = check_conformers(template, full)
    return References(full[:, template.heavy], len(read.blocks), len(kept), sum(reasons.values()),
                      int((~stereo).sum()), problems)


def _atomic_write_json(data: dict, path: Path) -> None:
    from adjoint_sampling.checkpoint import atomic_open

    with atomic_open(path, "w") as f:
        f.write(json.dumps(data, indent=1))


class EnergyCache:
    """Energy models built once per run, by name (energies.make_energy)."""

    def __init__(self, prebuilt: Optional[dict] = None):
        self.models = dict(prebuilt or {})
        self._owned = []

    def get(self, name: str):
        if name not in self.models:
            from energies import EnergyConfig, make_energy

            self.models[name] = make_energy(EnergyConfig(name=name))
            self._owned.append(self.models[name])
        return self.models[name]

    def close(self) -> None:
        for m in self._owned:
            m.close()


def evaluate_method(spec: MethodSpec, samples: GeneratedSamples, gen_time: float, template: MoleculeTemplate,
                    refs: References, autos: np.ndarray, cfg: BenchmarkConfig, energies: EnergyCache) -> dict:
    """Optional relaxation, validity checks, RMSD matrix and metrics of one method on one molecule."""
    coords = samples.coords
    t0 = time.perf_counter()
    record: dict = {}
    if spec.relax:
        outcome = relax_samples(energies.get(spec.relax), template, coords, cfg.fmax, cfg.relax_steps)
        coords = outcome.coords
        record.update(relax_energy=spec.relax, n_relax_converged=outcome.n_converged, n_relaxed=outcome.n_relaxed)
    wall = gen_time + time.perf_counter() - t0
    finite = np.isfinite(coords).all(axis=(1, 2))
    conn, stereo = check_conformers(template, coords)
    t1 = time.perf_counter()
    d = rmsd_matrix(refs.heavy_coords, coords[:, template.heavy], autos)
    record.update(
        wall_time_s=wall,
        rmsd_time_s=time.perf_counter() - t1,
        n_generated=int(len(coords)),
        n_finite=int(finite.sum()),
        n_wrong_connectivity=int((finite & ~conn).sum()) + samples.n_unmapped,
        n_wrong_stereo=int((conn & ~stereo).sum()),
        metrics=coverage_metrics(d),
        min_rmsd_per_reference=np.round(np.where(np.isnan(d), np.inf, d).min(axis=1), 5).tolist(),
    )
    return record


def molecule_key(entry: MoleculeEntry, refset: ReferenceSet, cfg: BenchmarkConfig) -> dict:
    """What every method's result on this molecule depends on: settings, SMILES, reference file content."""
    xyz = refset.xyz_path(entry.mol_id)
    try:
        ref_hash = file_sha256(xyz)
    except OSError:
        ref_hash = None  # load_references reports the unreadable file
    return {**cfg.fingerprint(), "smiles": entry.smiles, "references_sha256": ref_hash}


def method_key(spec: MethodSpec, generator, mol_id: Optional[str], cfg: BenchmarkConfig) -> dict:
    """What one method's result depends on beyond molecule_key: its generator's inputs and relaxation."""
    get = getattr(generator, "cache_key", None)
    key = dict(get(mol_id)) if get else {"generator": getattr(generator, "name", spec.base)}
    if spec.relax:
        key.update(relax=spec.relax, fmax=cfg.fmax, relax_steps=cfg.relax_steps)
    return key


def _load_existing(path: Path, settings: dict, log) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log(f"{path.name}: unreadable previous result ({exc}); recomputing")
        return {}
    if data.get("settings") != settings:
        stored = data.get("settings") or {}
        changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        log(f"{path.name}: stored with other {', '.join(changed) or 'settings'}; recomputing")
        return {}
    return data


def benchmark_molecule(entry: MoleculeEntry, refset: ReferenceSet, cfg: BenchmarkConfig, specs: list[MethodSpec],
                       generators: dict, energies: EnergyCache, mol_dir: Path, log) -> dict:
    """Evaluate the missing methods for one molecule and write its JSON; returns the record."""
    path = mol_dir / f"{entry.mol_id}.json"
    settings = molecule_key(entry, refset, cfg)
    record = _load_existing(path, settings, log)
    keys = {s.name: method_key(s, generators[s.base], entry.mol_id, cfg) for s in specs}
    stored = record.get("methods", {})
    todo = [s for s in specs if s.name not in stored or stored[s.name].get("inputs") != keys[s.name]]
    for s in todo:
        if s.name in stored:
            log(f"{entry.mol_id}: {s.name} was stored for other inputs; recomputing")
    if record and not todo:
        return record
    try:
        template = MoleculeTemplate.from_smiles(entry.smiles)
    except InvalidSmilesError as exc:
        raise MoleculeSkip(f"{entry.mol_id}: {exc}") from None
    refs = load_references(refset, entry, template, cfg.max_references)
    for p in refs.problems:
        log(p)
    autos = heavy_atom_automorphisms(template.mol)
    if not record:
        record = {"id": entry.mol_id, "smiles": entry.smiles, "rotatable_bonds": entry.rotatable_bonds,
                  "settings": settings, "n_heavy_atoms": int(len(template.heavy)),
                  "n_automorphisms": int(len(autos)), "methods": {}}
    record["references"] = {"n_read": refs.n_read, "n_kept": refs.n_kept, "n_unmapped": refs.n_unmapped,
                            "n_used": int(len(refs.heavy_coords)), "n_wrong_stereo": refs.n_wrong_stereo}
    n_samples = max(1, int(round(cfg.sample_factor * len(refs.heavy_coords))))
    by_base: dict[str, list[MethodSpec]] = {}
    for s in todo:
        by_base.setdefault(s.base, []).append(s)
    for base, group in by_base.items():
        t0 = time.perf_counter()
        try:
            samples = generators[base].generate(entry.mol_id, template, n_samples, cfg.seed)
        except MethodSkip as exc:
            for s in group:
                record["methods"][s.name] = {"skipped": str(exc), "inputs": keys[s.name]}
            log(f"skip {'/'.join(s.name for s in group)} for {entry.mol_id}: {exc}")
            continue
        gen_time = time.perf_counter() - t0
        for s in group:
            try:
                record["methods"][s.name] = evaluate_method(s, samples, gen_time, template, refs, autos, cfg, energies)
            except (MethodSkip, ValueError) as exc:  # e.g. energy cannot handle an element
                record["methods"][s.name] = {"skipped": str(exc).splitlines()[0]}
            record["methods"][s.name]["inputs"] = keys[s.name]
            if "skipped" in record["methods"][s.name]:
                log(f"skip {s.name} for {entry.mol_id}: {record['methods'][s.name]['skipped']}")
    _atomic_write_json(record, path)
    return record


def run_benchmark(refset: ReferenceSet, cfg: BenchmarkConfig, generators: Optional[dict] = None,
                  energies: Optional[dict] = None, log: Callable[[str], None] = print) -> dict:
    """Benchmark every selected molecule, then write metrics.csv, coverage.png and summary.md.

    generators: optional {base name: Generator} overriding the registry (tests, custom samplers).
    energies: optional {energy name: EnergyModel} overriding energies.make_energy.
    Every generator (checkpoint loaded) and every relaxation energy is built before anything is
    written: a method that cannot run at all raises MethodError instead of skipping each molecule.
    Returns {"summary": per-method aggregates, "markdown": table, "n_done": ..., "skipped": [...]}.
    """
    import torch

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    specs = [parse_method(m) for m in cfg.methods]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise MethodError(f"duplicate methods in {names}")
    options = {"threads": cfg.threads, "checkpoint": cfg.checkpoint, "device": cfg.device}
    gens = dict(generators or {})
    for s in specs:
        if s.base not in gens:
            gens[s.base] = build_generator(s.base, options)
    energy_cache = EnergyCache(energies)
    try:
        for s in specs:
            if s.relax:
                try:
                    energy_cache.get(s.relax)
                except Exception as exc:  # unknown name, missing backend or weights: no molecule could run
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise MethodError(f"method {s.name!r}: energy {s.relax!r} cannot be built: {reason}") from None
        return _run(refset, cfg, specs, gens, energy_cache, log)
    finally:
        energy_cache.close()


def _run(refset: ReferenceSet, cfg: BenchmarkConfig, specs: list[MethodSpec], gens: dict,
         energy_cache: EnergyCache, log: Callable[[str], None]) -> dict:
    names = [s.name for s in specs]
    out = Path(cfg.out_dir)
    mol_dir = out / "molecules"
    mol_dir.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []

    def note(msg: str) -> None:
        skipped.append(msg)
        log(msg)

    molecules = select_molecules(refset, cfg, note)
    records = []
    bar = _progress(molecules, cfg.progress)
    for entry in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(entry.mol_id)
        try:
            records.append(benchmark_molecule(entry, refset, cfg, specs, gens, energy_cache, mol_dir, note))
        except MoleculeSkip as exc:
            note(f"skip {exc}")
    (out / "messages.txt").write_text("\n".join(skipped) + ("\n" if skipped else ""))
    summary = collect(records, names)
    markdown = summary_markdown(summary) if summary else "no results\n"
    if summary:
        write_csv(summary, out / "metrics.csv")
        plot_coverage(summary, out / "coverage.png")
    (out / "summary.md").write_text(markdown)
    inputs = {s.name: method_key(s, gens[s.base], None, cfg) for s in specs}
    config = {**asdict(cfg), "references": {"list_file": str(refset.list_file.resolve()),
                                            "conformer_dir": str(refset.conformer_dir.resolve())},
              "method_inputs": inputs}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return {"summary": summary, "markdown": markdown, "n_done": len(records), "skipped": skipped}


def _progress(items, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="molecules", unit="mol")
