"""The sampler shipped with the package: what ``sample`` and ``benchmark`` use without --checkpoint.

Files (package data, so a non-editable install has them too):
  adjoint_sampling/data/sampler/checkpoint.pt      a training checkpoint (adjoint_sampling.checkpoint format)
  adjoint_sampling/data/sampler/provenance.json    how it was made: {"command": ..., "commit": ...,
                                                   "wall_time_s": seconds (or "wall_time": text),
                                                   "preset": ...}; any subset
Only the standard library is imported here, so asking for the path costs nothing.
"""
from __future__ import annotations

import json
from pathlib import Path

SAMPLER_DIR = Path(__file__).resolve().parent / "data" / "sampler"  # beside this module, wherever installed
CHECKPOINT_NAME = "checkpoint.pt"
PROVENANCE_NAME = "provenance.json"


class ShippedSamplerMissing(FileNotFoundError):
    """The package has no shipped checkpoint (the CLI reports it as one ``error:`` line, exit 2)."""


def shipped_checkpoint() -> Path:
    """Path of the shipped checkpoint; ShippedSamplerMissing naming the expected path if it is absent."""
    path = SAMPLER_DIR / CHECKPOINT_NAME
    if not path.is_file():
        raise ShippedSamplerMissing(f"no --checkpoint given and this installation ships no sampler: expected {path}; "
                                    "pass --checkpoint PATH (a run's checkpoint.pt from `adjoint-sampling train`)")
    return path


def _wall_time(seconds) -> str:
    minutes, secs = divmod(int(round(float(seconds))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"


def describe_shipped() -> str:
    """One line on how the shipped sampler was trained (preset, training wall time, commit), from
    provenance.json; says so when that file is absent or unreadable."""
    path = SAMPLER_DIR / PROVENANCE_NAME
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no provenance.json"
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8
        return f"provenance.json unreadable: {str(exc).splitlines()[0]}"
    if not isinstance(info, dict):
        return "provenance.json is not a JSON object"
    parts = []
    if info.get("preset"):
        parts.append(f"preset {info['preset']}")
    if info.get("wall_time_s") is not None:
        try:
            parts.append(f"trained {_wall_time(info['wall_time_s'])}")
        except (TypeError, ValueError):
            parts.append(f"trained {info['wall_time_s']}")
    elif info.get("wall_time"):  # already written out, e.g. "8 min 15 s"
        parts.append(f"trained {info['wall_time']}")
    if info.get("commit"):
        parts.append(f"commit {str(info['commit'])[:12]}")
    return ", ".join(parts) or "provenance.json names no preset, wall time or commit"
