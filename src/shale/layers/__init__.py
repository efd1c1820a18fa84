"""Data-model layers on the core: each takes a subspace and uses only the
core's public API, so it runs unchanged on every engine.

- ``nstore``: tuples of n items with pattern queries and a query planner;
- ``eavstore``: dicts as entity/attribute/value triples with an index;
- ``bstore``: content-addressed blobs of any size;
- ``pstore``: an inverted index with ranked search;
- ``vnstore``: a versioned tuple store with change sets and time travel.

``shale.found`` exposes the same layers under found's function names.
"""
