"""Typed configuration: dataclasses loaded from YAML presets with ``key=value`` overrides.

Units: positions Å, energies and temperature τ in eV, forces eV/Å.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from energies.config import EnergyConfig

PRESET_DIR = Path(__file__).parent / "presets"

# Elements the controller can embed (one-hot). Covers SPICE (H Li B C N O F Na Mg Si P S Cl K Ca Br I).
DEFAULT_ELEMENTS = [1, 3, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 19, 20, 35, 53]


class ConfigError(ValueError):
    """A preset or override is invalid (unknown key, wrong type, unreadable file)."""


@dataclass
class ModelConfig:
    """EGNN controller size. Reference: 12 layers x 128 hidden."""

    layers: int = 12
    hidden: int = 128
    elements: list = field(default_factory=lambda: list(DEFAULT_ELEMENTS))
    time_features: int = 8  # sin/cos pairs of t fed to nodes beside t itself
    max_output_norm: float = 300.0  # per-atom cap on v (2x the default score clip); 0 = off
    # add −β(t)·ã(X_t), the clipped adjoint at the current state, with a learned β(t): one energy
    # gradient per SDE and training step, so meant for cheap energies (synthetic systems, MMFF)
    energy_gradient: bool = False
    # torsional controller (e3nn): vector and pseudovector channels per atom, neighbour radius (Å);
    # ``hidden`` is its number of scalar channels and ``layers`` its interaction blocks
    vectors: int = 8
    radius: float = 5.0
    # EGNN only: evaluate on dense per-molecule blocks (adjoint_sampling.dense_egnn), the same function
    # and parameters as the edge-list reference path (false), faster on CPU (README "Speed")
    fast: bool = True
    # EGNN fast path only: dtype of the per-pair hidden x hidden matmuls. "float32" is exact;
    # "bfloat16" rounds their operands (mixed precision; README "Speed" has its speed and error)
    pair_matmul_dtype: str = "float32"
    # torsional controller only: torch.compile its interaction blocks (needs a C++ compiler; about a
    # minute of compilation per process, then faster steps: README "Speed"). Worth it for training runs
    compile: bool = False


@dataclass
class SDEConfig:
    """Base process and integration. Geometric: σ_min, σ_max (Å); linear: σ."""

    schedule: str = "geometric"
    sigma_min: float = 1e-3
    sigma_max: float = 1.0
    sigma: float = 1.0
    train_nfe: int = 500
    eval_nfe: int = 1000
    grid: str = "quadratic-linear"


@dataclass
class LossConfig:
    """τ (eV), per-atom score clip, regularizer weight α_reg, the p_base term switch and the
    buffer-posterior targets (single-system runs only; see ``loss.posterior_target``)."""

    tau: float = 5e-3
    max_score_norm: float = 150.0
    reg_alpha: float = 100.0
    use_pbase: bool = True
    posterior_targets: bool = False
    # times of the RAM regression: uniform on [0, 1], or "variance" (density ∝ g(t)², where the base
    # injects its noise; same minimiser, see loss.sample_bridge)
    times: str = "uniform"


@dataclass
class TorsionConfig:
    """Torsional mode: seed conformers per molecule (seeded ETKDGv3, then MMFF94 when ``relax_seeds``),
    the embedding seed, and whether amide C–N bonds rotate (off: the seed keeps them planar)."""

    seeds: int = 1
    embed_seed: int = 0
    relax_seeds: bool = True
    amides: bool = False


@dataclass
class DataConfig:
    """Training molecules: a list file (plain or SPICE layout) and/or inline SMILES."""

    molecules: Optional[str] = None
    smiles: list = field(default_factory=list)
    limit: int = 0  # 0 = all molecules of the file
    # a random subset of this many molecules of the file (0 = all), drawn with subset_seed: a list sorted
    # by rotatable-bond count (SPICE's) would give limit=N only its most rigid molecules
    subset: int = 0
    subset_seed: int = 0
    duplicates: int = 8
    max_atoms: int = 80
    allow_fragments: bool = False
    skip_invalid: bool = False  # skip (and report) unusable molecules of a list instead of stopping


@dataclass
class TrainConfig:
    epochs: int = 5000
    samples_per_epoch: int = 128  # in total: each of N DDP processes simulates 1/N of them
    batch_size: int = 64  # per process (DDP averages the gradients of N such batches)
    grad_steps: int = 100
    buffer_size: int = 1000  # per process
    lr: float = 1e-4
    grad_clip: float = 0.0  # 0 = off
    eval_every: int = 50
    eval_samples: int = 64
    checkpoint_every: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    max_minutes: float = 0.0  # stop (and checkpoint) after this wall time; 0 = no limit
    # stop after this much CPU time of the training process (its in-process energy included; energy
    # worker processes not): a budget that a shared machine does not shrink; 0 = no limit
    max_cpu_minutes: float = 0.0
    lr_final_frac: float = 1.0  # cosine-decay lr to this fraction of train.lr over the budget; 1 = constant
    # warm start: this many bridge-matching epochs on RDKit ETKDG conformers (no energy calls) before the
    # train.epochs Adjoint Sampling epochs; the phase also ends after pretrain_cpu_minutes (0 = no limit)
    pretrain_epochs: int = 0
    pretrain_cpu_minutes: float = 0.0
    # torch intra-op threads on CPU. 1 is the safe default: energy workers share the cores, and an
    # oversubscribed OpenMP pool made training steps far slower on the 2-core machine under load.
    cpu_threads: int = 1


@dataclass
class SampleConfig:
    """Conformers drawn after training (the README's main job)."""

    smiles: str = ""
    n: int = 0
    out: str = "samples.sdf"
    seed: int = 0


@dataclass
class Config:
    run_dir: str = "runs/default"
    mode: str = "cartesian"  # cartesian (EGNN on COM-free positions) | torsional (e3nn on torsion angles)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    torsion: TorsionConfig = field(default_factory=TorsionConfig)


def validate(cfg: Config) -> Config:
    """Raise ConfigError for values no run can use (checked before anything is written)."""
    import math

    def need(ok: bool, key: str, value, what: str) -> None:
        if not ok:
            raise ConfigError(f"config key '{key}' must be {what}, got {value!r}")

    if cfg.loss.times not in ("uniform", "variance"):
        raise ConfigError(f"config key 'loss.times' must be uniform or variance, got {cfg.loss.times!r}")
    if cfg.sde.grid not in ("uniform", "quadratic-linear", "variance"):
        raise ConfigError(f"config key 'sde.grid' must be uniform, quadratic-linear or variance, got {cfg.sde.grid!r}")
    if cfg.model.pair_matmul_dtype not in ("float32", "bfloat16"):
        raise ConfigError("config key 'model.pair_matmul_dtype' must be float32 or bfloat16, "
                          f"got {cfg.model.pair_matmul_dtype!r}")
    if cfg.model.pair_matmul_dtype != "float32" and not cfg.model.fast:
        raise ConfigError("config key 'model.pair_matmul_dtype' = bfloat16 needs model.fast=true")
    if cfg.model.compile and cfg.mode != "torsional":
        raise ConfigError("config key 'model.compile' is a torsional option (the EGNN's fast path is model.fast)")
    if cfg.mode not in ("cartesian", "torsional"):
        raise ConfigError(f"config key 'mode' must be cartesian or torsional, got {cfg.mode!r}")
    need(0 < cfg.train.lr_final_frac <= 1, "train.lr_final_frac", cfg.train.lr_final_frac, "in (0, 1]")
    for key in ("loss.tau", "train.lr", "sde.sigma_max"):
        value = _get(cfg, key)
        need(math.isfinite(value) and value > 0, key, value, "a finite number > 0")
    for key in ("loss.max_score_norm", "loss.reg_alpha", "model.max_output_norm", "train.grad_clip",
                "train.max_minutes", "train.max_cpu_minutes", "train.pretrain_cpu_minutes", "sde.sigma_min", "sde.sigma", "model.radius"):
        value = _get(cfg, key)
        need(math.isfinite(value) and value >= 0, key, value, "a finite number >= 0")
    for key in ("model.layers", "model.hidden", "model.vectors", "sde.train_nfe", "sde.eval_nfe", "train.epochs",
                "train.samples_per_epoch", "train.batch_size", "train.buffer_size", "data.duplicates",
                "torsion.seeds", "train.checkpoint_every"):
        value = _get(cfg, key)
        need(value >= 1, key, value, "an integer >= 1")
    for key in ("train.grad_steps", "train.eval_every", "train.eval_samples", "data.limit", "data.max_atoms",
                "train.cpu_threads", "sample.n", "train.pretrain_epochs", "data.subset"):
        value = _get(cfg, key)
        need(value >= 0, key, value, "an integer >= 0")
    if cfg.mode == "torsional":
        # the head pairs parity-even vectors (1e) with the bond axis; a block makes 1e only from the 1o
        # vectors of the block before it, so a single block outputs 0 for every state and never learns
        need(cfg.model.layers >= 2, "model.layers", cfg.model.layers, "an integer >= 2 for mode=torsional")
        for key in ("model.energy_gradient", "loss.posterior_targets"):
            if _get(cfg, key):
                raise ConfigError(f"config key '{key}' is a Cartesian option and cannot be used with mode=torsional")
    if not cfg.model.elements:
        raise ConfigError("config key 'model.elements' must list at least one atomic number")
    if cfg.sample.n > 0 and Path(cfg.sample.out).suffix.lower() not in (".sdf", ".xyz"):
        raise ConfigError(f"config key 'sample.out' must name a .sdf or .xyz file, got {cfg.sample.out!r}")
    return cfg


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the declared field type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, str):
            # PyYAML reads exponent forms without a dot ("5e-4") as strings
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"config key '{key}' expects a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
        if tp is int and float(value) != int(value):
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
        return tp(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
        return str(value)
    if tp is list or origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return list(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        return dict(value)
    return value


def _field_types(obj: Any) -> dict:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def set_key(cfg: Any, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` on nested dataclasses. A bare section name (``energy=xtb``) sets its ``name``."""
    parts = dotted.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        types = _field_types(obj)
        prefix = ".".join(parts[:i]) or "<top level>"
        if part not in types:
            raise ConfigError(f"unknown config key '{dotted}' (valid under {prefix}: {', '.join(types)})")
        current = getattr(obj, part)
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(current):
            if last:
                if isinstance(value, dict):
                    for k, v in value.items():
                        set_key(current, k, v)
                    return
                if "name" in _field_types(current):
                    current.name = _coerce(value, str, dotted)
                    return
                raise ConfigError(f"config key '{dotted}' is a section; set one of its keys")
            obj = current
            continue
        if not last:
            if isinstance(current, dict):  # free-form options dict: energy.options.foo=1
                current[".".join(parts[i + 1:])] = value
                return
            raise ConfigError(f"unknown config key '{dotted}' ('{part}' has no sub-keys)")
        setattr(obj, part, _coerce(value, types[part], dotted))


def _apply_mapping(cfg: Any, mapping: dict, prefix: str = "") -> None:
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        target = cfg
        for part in key.split(".")[:-1]:
            target = getattr(target, part, None)
        leaf = getattr(target, key.split(".")[-1], None) if target is not None else None
        if isinstance(v, dict) and dataclasses.is_dataclass(leaf):
            _apply_mapping(cfg, v, prefix=f"{key}.")
        else:
            set_key(cfg, key, v)


def resolve_preset(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"preset file not found: {path}")
        return path
    path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown preset '{name_or_path}' (known: {known})")
    return path


def load_config(preset: Optional[str] = "quick", overrides: Optional[list] = None) -> Config:
    """Load a preset (name in adjoint_sampling/presets or a YAML path) and apply ``key=value`` overrides."""
    cfg = Config()
    if preset:
        path = resolve_preset(preset)
        try:
            mapping = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read preset {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"preset {path} is not a UTF-8 text (YAML) file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse preset {path}: {exc}".splitlines()[0]) from None
        if not isinstance(mapping, dict):
            raise ConfigError(f"preset {path} must be a mapping of keys to values")
        _apply_mapping(cfg, mapping)
    for item in overrides or []:
        set_key(cfg, *parse_override(item))
    return validate(cfg)


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value read as YAML, or the raw text when it is no valid YAML)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def config_from_dict(mapping: dict) -> Config:
    """Rebuild a Config saved with ``to_dict`` (e.g. from a checkpoint)."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"a saved config must be a mapping, got {type(mapping).__name__}")
    cfg = Config()
    _apply_mapping(cfg, mapping)
    return validate(cfg)
