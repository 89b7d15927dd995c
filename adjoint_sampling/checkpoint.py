"""Checkpoints written atomically (temp file + rename) and loaded with weights_only=True.

The temp file is ``.<name>.<host>-<pid>.<random>.tmp`` beside the checkpoint. A writer killed with
SIGKILL cannot remove its own; the next save or load in that directory removes the temps whose writer
is gone: a pid of this host that no longer runs, or (another host's, or an untagged one from an
older version) a temp untouched for STALE_TEMP_S seconds.
"""
from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from pathlib import Path

import torch

STALE_TEMP_S = 3600.0  # a temp whose writer cannot be checked is stale after an hour without writes
_TEMP_RE = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<host>[A-Za-z0-9_-]*)-(?P<pid>\d+)\.)?[A-Za-z0-9_]+\.tmp$")


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64]


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def clean_stale_temps(directory: str | Path, now: float | None = None) -> list[Path]:
    """Remove checkpoint temp files in ``directory`` left by writers that are gone; returns them."""
    directory = Path(directory)
    now = time.time() if now is None else now
    host, removed = _host_tag(), []
    try:
        candidates = [p for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    except OSError:
        return removed
    for tmp in candidates:
        m = _TEMP_RE.match(tmp.name)
        if m is None:
            continue
        try:
            if m["pid"] is not None and m["host"] == host:
                stale = not _pid_alive(int(m["pid"]))
            else:
                stale = now - tmp.stat().st_mtime > STALE_TEMP_S
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # vanished meanwhile (its writer renamed it) or not ours to remove
            continue
    return removed


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not match the requested model."""


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` so that a crash never leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host_tag()}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint safely (no code runs from the file); CheckpointError on any problem."""
    path = Path(path)
    if path.parent.is_dir():
        clean_stale_temps(path.parent)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupted, truncated, or not a torch file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason[:200]}") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not an adjoint-sampling checkpoint (missing model/config)")
    return state
