"""Train a torsional sampler on 10 SPICE test molecules' SMILES and benchmark it against ETKDG.

    python scripts/spice10_torsional.py --out results/spice10 [--tau 0.08617] [--minutes 20]

The 10 molecules (ids below: 3-6 rotatable bonds, 23-40 atoms, 8-199 CREST references, all typed by
MMFF94) are trained on with the ``torsional-cpu`` preset (MMFF94), then one ``adjoint-sampling
benchmark`` run scores ``rdkit`` and ``adjoint-sampling`` on them, raw and relaxed with MMFF94 (same
fmax and steps for both). Needs the shared folder (SPICE list and CREST references).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from adjoint_sampling.cli import main as cli_main
from adjoint_sampling.shared_data import shared_dir

IDS = ["rot3_176745a8a8", "rot3_db2c007662", "rot3_7c2ed4e6db", "rot4_4c49351f67", "rot4_64242e1e35",
       "rot4_a77dc410c8", "rot5_8c94406e86", "rot5_9b200da4fa", "rot6_78b94d65d0", "rot6_1f3d8b0493"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/spice10")
    p.add_argument("--tau", type=float, default=None, help="loss.tau in eV (default: the preset's)")
    p.add_argument("--minutes", type=float, default=20.0, help="training CPU-time budget (train.max_cpu_minutes)")
    p.add_argument("--preset", default="torsional-cpu")
    p.add_argument("--skip-train", action="store_true", help="benchmark <out>/run/checkpoint.pt as it is")
    p.add_argument("overrides", nargs="*", help="more train overrides key=value")
    args = p.parse_args(argv)
    shared = shared_dir()
    if shared is None:
        print("error: the shared folder (SPICE list and CREST references) is not available", file=sys.stderr)
        return 2
    spice = shared / "data" / "spice"
    rows = {cols[2]: cols[1] for cols in (line.split("\t") for line in (spice / "spice_test.txt").read_text().splitlines()[1:])
            if len(cols) >= 3}
    smiles = [rows[i] for i in IDS]
    out = Path(args.out)
    run = out / "run"
    if not args.skip_train:
        train = ["train", "--preset", args.preset, "--no-progress", "--smiles", *smiles, f"run_dir={run}", "sample.n=0",
                 f"train.max_cpu_minutes={args.minutes}", *args.overrides]
        if args.tau is not None:
            train.append(f"loss.tau={args.tau}")
        t0 = time.time()
        code = cli_main(train)
        print(f"training: {time.time() - t0:.0f} s", flush=True)
        if code:
            return code
    t0 = time.time()
    code = cli_main(["benchmark", "--method", "rdkit", "--method", "adjoint-sampling", "--checkpoint",
                     str(run / "checkpoint.pt"), "--references", str(spice), "--ids", ",".join(IDS),
                     "--relax-energy", "mmff", "--out", str(out / "bench"), "--threads", "1", "--no-progress"])
    print(f"benchmark: {time.time() - t0:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
