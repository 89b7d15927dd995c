"""``python -m benchmark``: the coverage benchmark without the project-wide CLI."""
import argparse
import sys

from benchmark.cli import add_arguments, run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description="Coverage benchmark of conformer generators "
                                     "against reference conformers (recall/precision coverage and AMR).")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
