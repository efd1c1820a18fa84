"""Change feeds: live inserts, updates and deletes under a prefix.

::

    feed = await Feed("orders", b"orders/").declare(db)
    async for change in feed.subscribe(db, prefeed=True):
        print(change.op, change.key, change.value)

Declared feeds make every commit that changes keys under their prefix
append a log entry, in the same commit, keyed by its versionstamp. So a
feed works the same on every engine, never misses or repeats a change, and
a consumer that stores its cursor with its effects processes each change
exactly once (``Consumer``).
"""

from shale.engines.feedlog import DELETE, INSERT, UPDATE
from shale.errors import HistoryLost
from shale.feeds.consumer import Consumer
from shale.feeds.feed import ALL, Change, Feed

__all__ = ["ALL", "DELETE", "INSERT", "UPDATE", "Change", "Consumer", "Feed", "HistoryLost"]
