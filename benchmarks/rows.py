"""What the ``bench_*`` modules share: printing their result rows, the ``--quick`` command line.

A row is the dict every ``run(quick)`` returns (``name``, ``value``, ``unit``, ``note``, ...); ``run.py``
turns them into ``results.md``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["format_row", "quick_main"]


def format_row(row: dict[str, Any]) -> str:
    """``name: value unit  (note)``; a row without a value shows a dash."""
    value = "—" if row["value"] is None else f"{row['value']:.3f} {row['unit']}"
    return f"{row['name']}: {value}  ({row['note']})"


def quick_main(
    run: Callable[..., Iterable[dict[str, Any]]], description: str, quick_help: str, argv: list[str] | None
) -> int:
    """The ``main()`` of a benchmark whose only option is ``--quick``: run it and print its rows."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args(argv)
    for row in run(quick=args.quick):
        print(format_row(row))
    return 0
