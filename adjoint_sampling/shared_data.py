"""Where the read-only shared folder (``data/``, ``design/``) is: one lookup for code, scripts and tests.

The shared folder sits beside the repository root: a checkout (editable install) at ``<dir>/main``
looks for ``<dir>/shared``. The environment variable ``ADJOINT_SAMPLING_SHARED`` overrides that.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

ENV_VAR = "ADJOINT_SAMPLING_SHARED"


def shared_location() -> Path:
    """Where the shared folder is looked for (``$ADJOINT_SAMPLING_SHARED``, else beside the repository root)."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    # this file is <repo root>/adjoint_sampling/shared_data.py: parents[1] is the root, parents[2] beside it
    return Path(__file__).resolve().parents[2] / "shared"


def shared_dir() -> Optional[Path]:
    """The shared folder, or None when it does not exist."""
    path = shared_location()
    return path if path.is_dir() else None


def synthetic_data_dir() -> Path:
    """Default folder of the DW-4 / LJ-13 ground-truth splits (may not exist; callers report it)."""
    return shared_location() / "data" / "synthetic"
