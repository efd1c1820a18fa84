"""``shale.tuple`` against the official ``fdb.tuple``: pack and unpack of typical keys.

    python -m bench.bench_tuple [--number 20000] [--repeat 5]

The codecs run side by side in one process on the same tuples: ``shale`` is what
``shale.tuple.pack`` / ``unpack`` run by default (the compiled ``shale._tuple_accel`` when it
was built, see ``ACCELERATED``), ``pure`` is Shale's pure-Python code, the fallback, and
``fdb`` is the official pure-Python ``fdb.tuple``. Each figure is the best of ``--repeat``
timeit runs of ``--number`` calls, the codecs taking turns so that a busy machine slows all
alike. The target is the issue's: the default ``shale.tuple`` at least twice as fast as
``fdb.tuple`` (a ratio of 2.0 or more); ``pure ratio`` shows how far the fallback gets. The
``fdb`` columns stay empty when the ``foundationdb`` package is not installed
(``pip install .[bench]``).
"""

from __future__ import annotations

import argparse
import importlib
import timeit
import uuid
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from shale import tuple as shale_tuple

__all__ = ["TARGET", "TITLE", "TUPLES", "describe", "main", "markdown", "run"]

TITLE = "Tuple encoding: shale.tuple vs fdb.tuple"
TARGET = 2.0
"""shale ops/s / fdb ops/s, for pack and for unpack, by the default (accelerated) path."""
DEFAULT_NUMBER = 20_000
DEFAULT_REPEAT = 5

TUPLES: list[tuple[Any, ...]] = [
    ("users", 12345, "alice@example.com"),
    (b"\x00\x01", 7, 3.5, None),
    (uuid.UUID("12345678-1234-5678-1234-567812345678"), 1, True),
    ("a", (1, 2)),
    ("orders", 2**40, -17, "x" * 20),
]
"""Key-shaped tuples: strings and ints, escaped bytes with a float and None, a UUID with
a bool, a nested tuple, and a wider mix with a negative int."""


def _official() -> ModuleType | None:
    try:
        return importlib.import_module("fdb.tuple")
    except ImportError:
        return None


def _best(function: Callable[[Any], Any], argument: Any, number: int) -> float:
    """Seconds for ``number`` calls, timed without a wrapper around the call."""
    timer = timeit.Timer("function(argument)", globals={"function": function, "argument": argument})
    return timer.timeit(number)


def _measure(
    functions: Sequence[Callable[[Any], Any]], argument: Any, number: int, repeat: int
) -> list[float]:
    """The best seconds per call of each function, the functions taking turns."""
    best = [float("inf")] * len(functions)
    for _ in range(repeat):
        for index, function in enumerate(functions):
            best[index] = min(best[index], _best(function, argument, number))
    return [seconds / number for seconds in best]


def _row(
    operation: str, label: str, seconds: Sequence[float], fdb_seconds: float | None
) -> dict[str, object]:
    """``seconds``: the default path's, then the pure code's."""
    shale_seconds, pure_seconds = seconds
    ratio = None if fdb_seconds is None else fdb_seconds / shale_seconds
    pure_ratio = None if fdb_seconds is None else fdb_seconds / pure_seconds
    return {
        "operation": operation,
        "tuple": label,
        "shale ops/s": round(1 / shale_seconds),
        "pure ops/s": round(1 / pure_seconds),
        "fdb ops/s": None if fdb_seconds is None else round(1 / fdb_seconds),
        "ratio": None if ratio is None else round(ratio, 2),
        "pure ratio": None if pure_ratio is None else round(pure_ratio, 2),
        f"≥ {TARGET:g}x": None if ratio is None else ratio >= TARGET,
    }


def run(number: int = DEFAULT_NUMBER, repeat: int = DEFAULT_REPEAT) -> list[dict[str, object]]:
    """One row per operation and tuple, then one per operation over all the tuples."""
    official = _official()
    rows: list[dict[str, object]] = []
    for operation in ("pack", "unpack"):
        totals = [0.0, 0.0, 0.0]
        for value in TUPLES:
            packed = shale_tuple.pack(value)
            if shale_tuple._pure_pack(value) != packed:
                raise AssertionError(f"shale's two paths pack {value!r} differently")
            argument = value if operation == "pack" else packed
            functions = [
                getattr(shale_tuple, operation),
                getattr(shale_tuple, f"_pure_{operation}"),
            ]
            if official is not None:
                if official.pack(value) != packed:
                    raise AssertionError(f"shale and fdb pack {value!r} differently")
                functions.append(getattr(official, operation))
            seconds = _measure(functions, argument, number, repeat)
            other = seconds[2] if official is not None else None
            rows.append(_row(operation, repr(value), seconds[:2], other))
            for index, each in enumerate(seconds):
                totals[index] += each
        count = len(TUPLES)
        fdb_total = totals[2] / count if official is not None else None
        averages = [totals[0] / count, totals[1] / count]
        rows.append(_row(operation, "all of the above", averages, fdb_total))
    return rows


def describe() -> str:
    official = _official()
    version = "not installed" if official is None else _fdb_version()
    path = "compiled `shale._tuple_accel`" if shale_tuple.ACCELERATED else "pure Python only"
    return (
        f"{len(TUPLES)} tuples, best of {DEFAULT_REPEAT} x {DEFAULT_NUMBER:,} calls each; "
        f"shale: {path}; `fdb.tuple` from foundationdb {version}; target: ratio ≥ {TARGET:g}"
    )


def _fdb_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("foundationdb")
    except PackageNotFoundError:
        return "(unknown version)"


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def markdown(rows: Sequence[dict[str, object]]) -> str:
    """The rows as a Markdown table."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_tuple", description=__doc__)
    parser.add_argument("--number", type=int, default=DEFAULT_NUMBER, help="calls per run")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="runs, best kept")
    args = parser.parse_args(argv)
    print(markdown(run(args.number, args.repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
