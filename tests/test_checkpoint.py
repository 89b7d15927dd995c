"""Checkpoint temp files: a writer killed mid-write leaves one behind; the next save/load removes it."""
import os
import signal
import subprocess
import sys
import time

import torch

from adjoint_sampling.checkpoint import STALE_TEMP_S, clean_stale_temps, load_checkpoint, save_checkpoint

# A writer that creates its temp file, writes a few bytes, says so, then hangs inside torch.save.
_HANGING_WRITER = """
import sys, time, torch
from adjoint_sampling.checkpoint import save_checkpoint
def hang(state, f):
    f.write(b"partial"); f.flush()
    print("writing", flush=True)
    time.sleep(600)
torch.save = hang
save_checkpoint({"model": {}, "config": {}}, sys.argv[1])
"""


def _start_writer(path):
    proc = subprocess.Popen([sys.executable, "-c", _HANGING_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def _temps(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_temp_of_a_killed_writer_is_removed_by_the_next_save_and_load(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "config": {}}, path)
    proc = _start_writer(path)
    try:
        (left,) = _temps(tmp_path)
        assert left.startswith(".checkpoint.pt.") and f"-{proc.pid}." in left
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _temps(tmp_path) == [left]  # kill -9: nothing could clean up
        save_checkpoint({"model": {"w": torch.zeros(2)}, "config": {}}, path)
        assert _temps(tmp_path) == []
        assert torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(2))
    finally:
        proc.kill()
        proc.wait()

    # the same through load_checkpoint alone
    proc = _start_writer(path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(_temps(tmp_path)) == 1
    load_checkpoint(path)
    assert _temps(tmp_path) == []


def test_a_live_writers_temp_is_kept(tmp_path):
    path = tmp_path / "checkpoint.pt"
    proc = _start_writer(path)
    try:
        (live,) = _temps(tmp_path)
        save_checkpoint({"model": {}, "config": {}}, path)  # another writer runs meanwhile
        load_checkpoint(path)
        assert _temps(tmp_path) == [live]
    finally:
        proc.kill()
        proc.wait()
    load_checkpoint(path)
    assert _temps(tmp_path) == []


def test_temps_whose_writer_cannot_be_checked_go_when_stale(tmp_path):
    old_style = tmp_path / ".checkpoint.pt.k2j4x9_a.tmp"  # untagged (earlier versions of save_checkpoint)
    other_host = tmp_path / ".checkpoint.pt.some-other-host-12345.ab12cd34.tmp"
    unrelated = tmp_path / ".notes.tmp"
    for p in (old_style, other_host, unrelated):
        p.write_bytes(b"")
    now = time.time()
    assert clean_stale_temps(tmp_path, now=now) == []
    removed = clean_stale_temps(tmp_path, now=now + STALE_TEMP_S + 1)
    assert sorted(p.name for p in removed) == sorted([old_style.name, other_host.name])
    assert _temps(tmp_path) == [unrelated.name]
