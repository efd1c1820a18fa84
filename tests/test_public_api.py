"""The public surface is deliberate: ``__all__`` is pinned here."""

import shale
import shale.errors

EXPECTED = {
    "DEFAULT_URL",
    "AccessedUnreadable",
    "AuthenticationError",
    "Backoff",
    "CommitUnknownResult",
    "ConflictError",
    "Database",
    "DatabaseClosed",
    "DatabaseLockedError",
    "EngineError",
    "ForeignDatabaseError",
    "ExponentialBackoff",
    "FormatVersionError",
    "FullJitterBackoff",
    "HistoryLost",
    "InvertedRange",
    "KeyOutsideLegalRange",
    "KeySelector",
    "KeyTooLarge",
    "LimitError",
    "ProtocolError",
    "NoBackoff",
    "RangeResult",
    "ReadOnlyError",
    "ReadVersionError",
    "RetryableError",
    "ShaleError",
    "SnapshotReads",
    "Subspace",
    "Transaction",
    "TransactionStateError",
    "TransactionTooLarge",
    "TransactionTooOld",
    "Unavailable",
    "UnknownEngineError",
    "UsageError",
    "ValueTooLarge",
    "__version__",
    "open",
    "strinc",
    "transactional",
}


def test_all_is_pinned() -> None:
    assert set(shale.__all__) == EXPECTED
    for name in shale.__all__:
        assert hasattr(shale, name), name


def test_every_error_derives_from_the_root_and_is_in_the_tree() -> None:
    doc = shale.errors.__doc__ or ""
    for name in shale.errors.__all__:
        cls = getattr(shale.errors, name)
        assert issubclass(cls, shale.ShaleError), name
        assert name in doc, f"{name} is missing from the tree in shale.errors' docstring"
    assert issubclass(shale.ConflictError, shale.RetryableError)
    assert not issubclass(shale.KeyTooLarge, shale.RetryableError)
    assert issubclass(shale.UnknownEngineError, ValueError)
