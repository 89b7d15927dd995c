"""Evaluate molecules one at a time in single-threaded worker processes.

Each molecule is a ``Job``; a backend object (built inside the worker by a picklable
``make_backend`` callable) turns it into an energy (eV) and forces (eV/Å). Failures are
isolated per molecule:

* an exception or non-finite result -> that molecule fails with the exception text;
* a worker that dies (segfault, OOM kill, ``kill -9``) -> the molecule it was running fails,
  the worker is restarted and the rest of its molecules are resent;
* a molecule running longer than ``timeout_s`` -> the worker is killed and restarted,
  that molecule fails.

This module imports only the standard library and numpy so that spawned workers start
fast (the parent usually has torch loaded, which is why workers are spawned, not forked).
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import signal
import threading
import time
import weakref
from collections import OrderedDict, deque
from multiprocessing.connection import wait
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


READY = "ready"


class Job(NamedTuple):
    """One molecule: positions in Å, total charge (e), spin multiplicity 2S+1."""

    index: int
    key: object
    numbers: np.ndarray
    positions: np.ndarray
    charge: int
    spin: int


class Outcome(NamedTuple):
    """energy in eV and forces [n, 3] in eV/Å, or ``reason`` (str) when the molecule failed."""

    index: int
    energy: float
    forces: Optional[np.ndarray]
    reason: Optional[str]


def failed(index: int, reason: str) -> Outcome:
    return Outcome(index, float("nan"), None, reason)


def run_job(backend, job: Job) -> Outcome:
    """Run one molecule, turning every exception or non-finite number into a failure."""
    try:
        energy, forces = backend.compute(job.key, job.numbers, job.positions, job.charge, job.spin)
        energy = float(energy)
        forces = np.asarray(forces, dtype=np.float64).reshape(len(job.numbers), 3)
    except Exception as exc:  # noqa: BLE001 - any backend error is one molecule's failure
        return failed(job.index, f"{type(exc).__name__}: {exc}".strip())
    if not np.isfinite(energy) or not np.isfinite(forces).all():
        return failed(job.index, "non-finite energy or forces")
    return Outcome(job.index, energy, forces, None)


class LazyBackend:
    """Build the backend on first use; remember a construction error and report it per molecule."""

    def __init__(self, make_backend: Callable[[], object]):
        self._make = make_backend
        self._backend = None
        self._error: Optional[str] = None

    def compute(self, key, numbers, positions, charge, spin):
        if self._backend is None and self._error is None:
            try:
                self._backend = self._make()
            except Exception as exc:  # noqa: BLE001
                self._error = f"backend initialisation failed: {type(exc).__name__}: {exc}"
        if self._error is not None:
            raise RuntimeError(self._error)
        return self._backend.compute(key, numbers, positions, charge, spin)


def single_thread_env() -> None:
    """Pin numerical libraries of this process to one thread (must precede their import)."""
    for var in THREAD_ENV_VARS:
        os.environ[var] = "1"


def _worker_main(conn, make_backend: Callable[[], object]) -> None:
    """Worker loop: receive lists of jobs, send one Outcome per job, in order."""
    single_thread_env()
    # The parent handles Ctrl-C and shuts workers down; avoid a traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    backend = LazyBackend(make_backend)
    conn.send(READY)  # per-molecule timeouts start counting from here, not from spawn
    while True:
        try:
            jobs = conn.recv()
        except (EOFError, OSError):
            return
        if jobs is None:
            return
        for job in jobs:
            conn.send(run_job(backend, job))


def assign_contiguous(keys: Sequence[object], costs: Sequence[float], workers: int) -> list[list[int]]:
    """Split molecule indices into ``workers`` lists of similar total cost.

    Molecules with the same key are placed next to each other before splitting, so all
    conformers of one molecule land on one worker (or two neighbouring ones when a single
    molecule makes up more than a worker's share) and its cached calculator is reused.
    """
    groups: "OrderedDict[object, list[int]]" = OrderedDict()
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    order = [i for members in groups.values() for i in members]
    total = float(sum(costs)) or 1.0
    chunks: list[list[int]] = [[] for _ in range(max(1, workers))]
    done = 0.0
    for i in order:
        # Place by the midpoint of the molecule's cost interval: balanced, contiguous chunks.
        w = min(int((done + 0.5 * costs[i]) / total * len(chunks)), len(chunks) - 1)
        chunks[w].append(i)
        done += costs[i]
    return chunks


class SerialRunner:
    """Evaluate jobs in this process (no timeouts, no crash isolation)."""

    def __init__(self, make_backend: Callable[[], object]):
        self._backend = LazyBackend(make_backend)

    def run(self, jobs: Sequence[Job], costs: Optional[Sequence[float]] = None) -> list[Outcome]:
        return [run_job(self._backend, job) for job in jobs]

    def close(self) -> None:
        self._backend = None


class _Worker:
    """One spawned process and the parent's end of its pipe."""

    def __init__(self, ctx, make_backend):
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child, make_backend), daemon=True)
        self.process.start()
        child.close()
        self.started = time.monotonic()
        self.ready = False  # set when the worker's READY message arrives
        self.pending: deque = deque()
        self.deadline = 0.0

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


class WorkerPool:
    """A fixed number of spawned single-threaded workers with per-molecule failure isolation.

    make_backend: picklable zero-argument callable (e.g. functools.partial of a class defined
        in a module that does not import torch) building the per-worker backend.
    timeout_s: wall-clock limit per molecule; a fresh worker additionally gets
        ``start_grace_s`` to start its interpreter and report ready.
    """

    def __init__(
        self,
        make_backend: Callable[[], object],
        workers: int,
        timeout_s: float = 120.0,
        start_grace_s: float = 60.0,
    ):
        if workers < 1:
            raise ValueError(f"WorkerPool needs workers >= 1, got {workers}")
        self._make_backend = make_backend
        self._ctx = mp.get_context("spawn")
        self.timeout_s = float(timeout_s)
        self.start_grace_s = float(start_grace_s)
        self._workers: list[Optional[_Worker]] = [None] * int(workers)
        self._lock = threading.Lock()
        self.restarts = 0  # workers restarted after a crash or timeout (for diagnostics)
        _register_for_exit(self)

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    def worker_pids(self) -> list[Optional[int]]:
        return [w.pid if w is not None else None for w in self._workers]

    def _start(self, slot: int) -> _Worker:
        # Spawned children inherit os.environ: pin threads there too, in case the child's
        # main-module import loads an OpenMP library before _worker_main runs.
        saved = {var: os.environ.get(var) for var in THREAD_ENV_VARS}
        try:
            single_thread_env()
            worker = _Worker(self._ctx, self._make_backend)
        finally:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
        self._workers[slot] = worker
        return worker

    def _alive(self, slot: int) -> _Worker:
        worker = self._workers[slot]
        if worker is None or not worker.process.is_alive():
            if worker is not None:
                worker.kill()
            worker = self._start(slot)
        return worker

    def _dispatch(self, worker: _Worker, jobs: Sequence[Job]) -> None:
        worker.pending = deque(jobs)
        if worker.ready:
            worker.deadline = time.monotonic() + self.timeout_s
        else:
            worker.deadline = worker.started + self.start_grace_s + self.timeout_s
        try:
            worker.conn.send(list(jobs))
        except (OSError, ValueError):
            pass  # the worker died: the run loop sees it and restarts it

    def run(self, jobs: Sequence[Job], costs: Optional[Sequence[float]] = None) -> list[Outcome]:
        """Evaluate all jobs; returns one Outcome per job in the order given."""
        if not jobs:
            return []
        costs = costs if costs is not None else [float(len(j.numbers)) ** 3 for j in jobs]
        chunks = assign_contiguous([j.key for j in jobs], costs, self.num_workers)
        with self._lock:
            try:
                results = self._run_chunks([[jobs[i] for i in chunk] for chunk in chunks])
            except BaseException:
                # e.g. Ctrl-C: workers may still be sending results of this call; never let a
                # later call read them, so drop every worker (they restart on the next call).
                self._kill_all()
                raise
        by_index = {o.index: o for o in results}
        return [by_index[j.index] for j in jobs]

    def _run_chunks(self, chunks: list[list[Job]]) -> list[Outcome]:
        results: list[Outcome] = []
        busy: dict[int, _Worker] = {}
        for slot, chunk in enumerate(chunks):
            if chunk:
                worker = self._alive(slot)
                self._dispatch(worker, chunk)
                busy[slot] = worker
        while busy:
            soonest = min(w.deadline for w in busy.values())
            handles = [w.conn for w in busy.values()] + [w.process.sentinel for w in busy.values()]
            wait(handles, timeout=max(0.0, soonest - time.monotonic()))
            for slot, worker in list(busy.items()):
                crash = self._drain(worker, results)
                if not worker.pending:
                    del busy[slot]
                    continue
                if crash is None and not worker.process.is_alive():
                    crash = f"worker process died (exit code {worker.process.exitcode})"
                if crash is None and time.monotonic() > worker.deadline:
                    crash = f"timeout: no result within {self.timeout_s:g} s"
                if crash is not None:
                    busy_worker = self._recover(slot, worker, crash, results)
                    if busy_worker is None:
                        del busy[slot]
                    else:
                        busy[slot] = busy_worker
        return results

    def _drain(self, worker: _Worker, results: list[Outcome]) -> Optional[str]:
        """Collect finished outcomes; return a reason string if the pipe broke."""
        try:
            while worker.pending and worker.conn.poll():
                outcome = worker.conn.recv()
                if outcome == READY:
                    worker.ready = True
                    worker.deadline = time.monotonic() + self.timeout_s
                    continue
                job = worker.pending.popleft()
                if outcome.index != job.index:  # protocol violation: never trust the rest
                    results.append(failed(job.index, "worker returned results out of order"))
                    return "worker protocol error"
                results.append(outcome)
                worker.deadline = time.monotonic() + self.timeout_s
        except (EOFError, OSError) as exc:
            return f"worker process died ({type(exc).__name__})"
        except Exception as exc:  # noqa: BLE001 - e.g. a truncated pickle from a dying worker
            return f"worker sent an unreadable result ({type(exc).__name__})"
        return None

    def _recover(self, slot: int, worker: _Worker, reason: str, results: list[Outcome]) -> Optional[_Worker]:
        """Fail the running molecule, restart the worker and resend the remaining ones."""
        worker.kill()
        self.restarts += 1
        current = worker.pending.popleft()
        results.append(failed(current.index, reason))
        remaining = list(worker.pending)
        new = self._start(slot)
        if not remaining:
            return None
        self._dispatch(new, remaining)
        return new

    def _kill_all(self) -> None:
        for slot, worker in enumerate(self._workers):
            if worker is not None:
                worker.kill()
                self._workers[slot] = None

    def close(self) -> None:
        """Stop all workers. Safe to call twice."""
        for slot, worker in enumerate(self._workers):
            if worker is not None:
                worker.stop()
                self._workers[slot] = None


_OPEN_POOLS: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()


def _register_for_exit(pool: WorkerPool) -> None:
    _OPEN_POOLS.add(pool)


@atexit.register
def _close_all_pools() -> None:
    for pool in list(_OPEN_POOLS):
        try:
            pool.close()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
