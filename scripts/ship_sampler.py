"""Put a finished run's model into the package as the shipped sampler (adjoint_sampling/data/sampler/).

    python scripts/ship_sampler.py runs/spice-cpu --preset spice-cpu \
        --command "adjoint-sampling train --preset spice-cpu" --wall-time-s 5400

Keeps what sampling needs (model, config, mode, training molecules and their seed conformers) and drops
the optimizer, replay buffer and random streams, which only a resume needs (the run directory keeps
them). Writes provenance.json beside it: command, commit, wall time, preset, epochs of both phases.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
from pathlib import Path

from adjoint_sampling.checkpoint import atomic_open, load_checkpoint, save_checkpoint
from adjoint_sampling.pretrained import CHECKPOINT_NAME, PROVENANCE_NAME, SAMPLER_DIR

KEEP = ("format", "mode", "seeds", "epoch", "config", "molecules", "model", "dim", "as_start_epoch")


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _phases(run_dir: Path) -> dict:
    """Epochs per phase and the fit's wall time from the run's metrics.csv."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    counts = {"pretrain": 0, "as": 0}
    for r in rows:
        counts[r.get("phase") or "as"] += 1
    return {"pretrain_epochs": counts["pretrain"], "as_epochs": counts["as"],
            "fit_time_s": float(rows[-1]["time_s"]) if rows else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--checkpoint", default="checkpoint.pt", help="file in run_dir to ship [checkpoint.pt]")
    p.add_argument("--command", required=True, help="the command that trained it (recorded verbatim)")
    p.add_argument("--wall-time-s", type=float, required=True, help="wall time of that command (seconds)")
    p.add_argument("--preset", required=True, help="the preset it was trained with")
    p.add_argument("--commit", default=None, help="commit the run was trained at [HEAD]")
    p.add_argument("--out", type=Path, default=SAMPLER_DIR)
    args = p.parse_args()

    state = load_checkpoint(args.run_dir / args.checkpoint)
    slim = {k: state[k] for k in KEEP if k in state}
    args.out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(slim, args.out / CHECKPOINT_NAME)
    info = {
        "command": args.command,
        "commit": args.commit or _commit(),
        "wall_time_s": args.wall_time_s,
        "preset": args.preset,
        "mode": state.get("mode"),
        "molecules": len(state.get("molecules", [])),
        "epochs": state.get("epoch"),
        **_phases(args.run_dir),
        "machine": "2-core CPU, 1 torch thread, no GPU",
    }
    with atomic_open(args.out / PROVENANCE_NAME, "w") as f:
        json.dump(info, f, indent=1)
    size = (args.out / CHECKPOINT_NAME).stat().st_size / 1e6
    print(f"shipped {args.run_dir / args.checkpoint} -> {args.out / CHECKPOINT_NAME} ({size:.2f} MB); {info}")


if __name__ == "__main__":
    main()
