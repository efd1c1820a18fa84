"""The conformance suite every Shale engine must pass.

An engine is defined by this suite, not by its first implementation. Use it
from a third-party engine's tests by subclassing and naming the URL::

    import pytest
    from shale.testing import ConformanceSuite

    class TestMyEngine(ConformanceSuite):
        @pytest.fixture
        def db_url(self, tmp_path):
            return f"myengine://{tmp_path}/db"

Without an override, ``db_url`` is parametrized over every built-in engine
(``ENGINE_URLS``). Tests that need an ability an engine lacks are skipped
with the capability named. ``ConformanceSuite`` includes ``FeedSuite``, the
change-feed tests, which needs the same ``db`` and ``opener`` fixtures when
used on its own. It needs ``pytest`` and ``pytest-asyncio`` (in
``asyncio_mode = "auto"``) and ``hypothesis``.
"""

from shale.testing.conformance import ENGINE_URLS, ConformanceSuite
from shale.testing.feeds import FeedSuite
from shale.testing.model import check_serializable, run_random_history

__all__ = [
    "ENGINE_URLS",
    "ConformanceSuite",
    "FeedSuite",
    "check_serializable",
    "run_random_history",
]
