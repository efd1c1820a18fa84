"""Options every engine understands, parsed in one place."""

from __future__ import annotations

from collections.abc import Mapping

from shale.errors import EngineError

__all__ = ["DEFAULT_MAX_TRANSACTION_AGE", "window_option"]

DEFAULT_MAX_TRANSACTION_AGE = 5.0
"""Seconds a transaction may live, as FoundationDB's MVCC window."""


def window_option(options: Mapping[str, object]) -> float:
    """The ``max_transaction_age`` option in seconds, validated."""
    raw = options.get("max_transaction_age", DEFAULT_MAX_TRANSACTION_AGE)
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise EngineError(f"max_transaction_age must be a number of seconds, not {raw!r}") from None
    if not value > 0:
        raise EngineError(f"max_transaction_age must be positive, not {raw!r}")
    return value
