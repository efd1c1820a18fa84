"""Run every benchmark module in ``bench/`` and print their tables as Markdown.

    python -m bench.run [NAME ...]

A benchmark module is ``bench/bench_<name>.py`` exposing ``run()``, which
takes no required arguments and returns its rows as a list of dicts. It may
also expose ``TITLE`` (a heading), ``describe()`` (one line of parameters)
and ``markdown(rows)`` (its own table); without ``markdown`` the rows are
printed with their keys as columns. The output starts with the command line
and the machine, so it can be pasted into BENCHMARKS.md as it is.

Modules are found by name rather than listed here, so a new benchmark needs
no edit to this file. A module that fails is reported and the others still
run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import pkgutil
import platform
import shlex
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from types import ModuleType

import bench

__all__ = ["bench_modules", "machine", "main", "table"]

PREFIX = "bench_"


def bench_modules() -> list[str]:
    """The names of the benchmark modules in ``bench/``, sorted."""
    return sorted(
        info.name for info in pkgutil.iter_modules(bench.__path__) if info.name.startswith(PREFIX)
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _shale_version() -> str:
    try:
        import shale
    except ImportError as exc:
        return f"not importable ({exc})"
    return shale.__version__


def _commit() -> str:
    """The checked-out commit, so a table can be traced to the code it measured."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head} with uncommitted changes" if dirty else head


def machine() -> list[str]:
    """What the figures depend on, one ``name: value`` line each."""
    return [
        f"CPU: {_cpu_model()}, {os.cpu_count()} logical CPUs",
        f"OS: {platform.platform()}",
        f"Python: {platform.python_implementation()} {platform.python_version()}",
        f"SQLite: {sqlite3.sqlite_version}",
        f"Shale: {_shale_version()}, commit {_commit()}",
    ]


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: Sequence[dict[str, object]]) -> str:
    """Rows as a Markdown table, columns in first-seen key order."""
    if not rows:
        return "(no rows)"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _report(module: ModuleType) -> str:
    rows = module.run()
    render = getattr(module, "markdown", table)
    describe = getattr(module, "describe", None)
    parts = [describe(), ""] if describe is not None else []
    return "\n".join([*parts, render(rows)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="run only these (core, tuple, ...)"
    )
    args = parser.parse_args(argv)
    available = bench_modules()
    wanted = [n if n.startswith(PREFIX) else PREFIX + n for n in args.names] or available
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)} (have: {', '.join(available)})")

    command = shlex.join(["python", "-m", "bench.run", *(sys.argv[1:] if argv is None else argv)])
    print("# Shale benchmarks\n")
    print(f"`{command}`, {datetime.date.today().isoformat()}\n")
    print("\n".join(f"- {line}" for line in machine()))
    failed = 0
    for name in wanted:
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            title = getattr(module, "TITLE", name)
            body = _report(module)
        except Exception:
            failed += 1
            print(f"\n## {name}: FAILED\n\n```\n{traceback.format_exc()}```")
            continue
        elapsed = time.perf_counter() - started
        print(f"\n## {title}\n\n`bench/{name}.py`, {elapsed:.0f} s\n\n{body}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
