"""Fuzz figures: hostile documents through the loader, validator and planner.

Random JSON text, random graphs over the installed node catalogue, literals nested up to
200 000 deep, integers of thousands of digits, megabyte strings, as files, params and
Python dicts. Prints documents tried, rejected with a GraphError, planned, and crashes
(anything else escaping, which should be 0).

Run: python bench/fuzz.py [--examples 1000]   (each of four document kinds)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as a file: this folder would shadow the `engine` package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from tests.core.fuzz_documents import fuzz  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="documents of each kind")
    tally = fuzz(parser.parse_args().examples)
    print(tally.line())
    for crash in tally.crashes[:10]:
        print("  crash:", crash)


if __name__ == "__main__":
    main()
