"""Command line: ``python -m infogain demo|bench`` (placeholder until the demo lands)."""
import sys


def main(argv=None) -> int:
    print("infogain: the demo and bench commands are not available yet", file=sys.stderr)
    return 1
