"""Every built-in engine against the shared conformance suite."""

from shale.testing import ConformanceSuite


class TestBuiltinEngines(ConformanceSuite):
    """memory:// and sqlite:// (the ``db_url`` fixture's default parameters)."""
