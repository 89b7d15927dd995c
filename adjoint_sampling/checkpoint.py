"""Checkpoints written atomically (temp file + rename) and loaded with weights_only=True; the
run-directory lock.

The temp file is ``.<name>.<host>-<pid>.<random>.tmp`` beside the checkpoint (``temp_beside``; the
conformer writer names its temps the same way). A writer killed with SIGKILL cannot remove its own;
the next save or load in that directory removes the temps whose writer is gone: a pid of this host
that no longer runs, or (another host's, or an untagged one from an older version) a temp untouched
for STALE_TEMP_S seconds.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
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


KNOWN_FORMATS = (1, 2)  # checkpoint layouts this version reads (the trainer writes the newest)


def check_format(state: dict, path: str | Path = "checkpoint") -> None:
    """CheckpointError unless ``state`` is a layout this version reads and its config is a mapping."""
    if state.get("format") not in KNOWN_FORMATS:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format')!r} is not one this version reads "
                              f"({', '.join(map(str, KNOWN_FORMATS))})")
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path}: the checkpoint's config is a {type(state.get('config')).__name__}, not a mapping")


def temp_beside(path: str | Path, plain_mode: bool = False) -> tuple[int, str]:
    """(fd, name) of a new unique temp file beside ``path``, named so clean_stale_temps can tell
    whether its writer is gone: ``.<name>.<host>-<pid>.<random>.tmp``. mkstemp makes it private
    (0600); ``plain_mode`` gives it the permissions ``open(path, "w")`` would (0666 less the umask)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host_tag()}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
    if plain_mode:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", plain_mode: bool = True, newline=None):
    """Open a unique temp file beside ``path`` (``temp_beside``) for writing; on a clean exit it is
    flushed, fsynced and renamed onto ``path``, on any error removed. Readers see the old file or the
    whole new one, and concurrent writers never mix: the last rename wins whole."""
    fd, tmp = temp_beside(path, plain_mode=plain_mode)
    try:
        with os.fdopen(fd, mode, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` so that a crash never leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    with atomic_open(path, "wb", plain_mode=False) as f:
        torch.save(state, f)


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


# ---------------------------------------------------------------------- run-directory lock
LOCK_NAME = ".lock"


class RunDirLocked(CheckpointError):
    """Another live process holds the run directory."""


class RunDirLock:
    """An exclusive lock on a run directory for as long as one process trains in it.

    ``fcntl.flock`` on ``<run_dir>/.lock``, kept open until ``release`` (or the process's end: the kernel
    drops the lock of a killed process, so a stale lock needs no clean-up). The file holds the owner's
    host and pid, for the message the next process gets. The lock file itself stays behind.
    """

    @staticmethod
    def in_use_message(run_dir: str | Path, owner: str) -> str:
        return (f"run directory {Path(run_dir)} is in use by {owner} (lock {Path(run_dir) / LOCK_NAME}); "
                "wait for it to finish or choose another run_dir")

    def __init__(self, run_dir: str | Path):
        import fcntl

        self.path = Path(run_dir) / LOCK_NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            finally:
                os.close(fd)
            raise RunDirLocked(self.in_use_message(run_dir, owner)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd

    @staticmethod
    def holder(run_dir: str | Path) -> str | None:
        """Who holds the lock of run_dir now (None: nobody); creates and changes nothing."""
        import fcntl

        path = Path(run_dir) / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunDirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
