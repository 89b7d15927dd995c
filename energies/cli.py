"""``adjoint-sampling energies``: list the available energy models and whether they can run."""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``energies`` sub-command."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--no-import-check",
        action="store_true",
        help="do not import each energy's dependencies (faster; 'deps' column shows '?')",
    )


def format_table(rows: list[dict]) -> str:
    """Markdown table: name, elements, charges, deps installed, description."""
    header = ["name", "elements", "charges", "deps", "description"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        if row["deps_ok"] is None:
            deps = "?"
        else:
            deps = "yes" if row["deps_ok"] else "missing: " + ", ".join(row["missing"])
        cells = [row["name"], row["elements"], row["charges"], deps, row["description"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the energies table; returns the process exit code (0)."""
    from energies.registry import available_energies

    rows = available_energies(check_imports=not getattr(args, "no_import_check", False))
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m energies.cli", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
