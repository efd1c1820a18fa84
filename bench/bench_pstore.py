"""pstore against SQLite FTS5: index a synthetic corpus, then run AND queries ranked by BM25.

    python -m bench.bench_pstore [--docs 10000] [--queries 300] [--batch 250]

The corpus is generated from a fixed seed: a vocabulary of made-up lowercase words drawn
with Zipf weights (s = 1.1), 50 to 200 words per document. Every system gets the same
texts and the same queries, in the same run:

- Shale's pstore on ``memory://`` and on ``sqlite://`` (a temp dir, default durability),
  documents tokenized by ``pstore.tokenize`` and written with ``index_many``;
- FTS5 through ``sqlite3`` (a temp file, WAL, ``synchronous=FULL`` like Shale), its
  ``unicode61`` tokenizer, ``MATCH 'a AND b'``, ``ORDER BY bm25(t)``.

Both index in transactions of ``--batch`` documents. Queries have one to three terms,
mixing common and mid-frequency words; each returns the 10 best. Before timing queries,
every query's full match set is compared between pstore and FTS5 and must be equal (and
the corpus must produce matches), so a run that silently finds nothing fails. "top-10
overlap" is how many of FTS5's 10 best pstore also ranks in its 10 best: the two BM25s
differ only in IDF (FTS5 clamps it for terms in more than half the documents, pstore
uses Lucene's ``ln(1 + (N - n + 0.5) / (n + 0.5))``), so it is informative, not checked.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import shale
from shale.layers.pstore import PStore, tokenize

__all__ = ["TITLE", "Corpus", "describe", "main", "run"]

TITLE = "pstore: inverted index and BM25 search vs SQLite FTS5"

DEFAULT_DOCS = 10_000
DEFAULT_QUERIES = 300
DEFAULT_BATCH = 250
VOCABULARY = 20_000
ZIPF = 1.1
WORDS = (50, 200)
LIMIT = 10
SEED = 20_240_601
FTS5 = "SQLite FTS5"


@dataclass(frozen=True)
class Corpus:
    """Texts and queries, generated once so every system sees the same ones."""

    texts: list[str]
    queries: list[list[str]]

    @classmethod
    def make(cls, docs: int, queries: int, seed: int = SEED) -> Corpus:
        rng = random.Random(seed)
        vocabulary = _vocabulary(rng, VOCABULARY)
        weights = list(accumulate(1 / rank**ZIPF for rank in range(1, VOCABULARY + 1)))
        texts = [
            " ".join(rng.choices(vocabulary, cum_weights=weights, k=rng.randint(*WORDS)))
            for _ in range(docs)
        ]
        return cls(texts, _queries(rng, vocabulary, queries))


def _vocabulary(rng: random.Random, size: int) -> list[str]:
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    words: dict[str, None] = {}
    while len(words) < size:
        words["".join(rng.choices(syllables, k=rng.randint(2, 4)))] = None
    return list(words)


def _queries(rng: random.Random, vocabulary: list[str], count: int) -> list[list[str]]:
    """A third each: one mid-frequency word; a common word AND a mid one; three
    words of the top 300. Ranks, not words, so the mix holds for any corpus size."""
    out: list[list[str]] = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            out.append([vocabulary[rng.randrange(20, 400)]])
        elif kind == 1:
            out.append([vocabulary[rng.randrange(0, 20)], vocabulary[rng.randrange(20, 300)]])
        else:
            out.append(rng.sample(vocabulary[:300], 3))
    return out


# -- Shale ---------------------------------------------------------------------------------


async def _shale(url: str, corpus: Corpus, batch: int) -> dict[str, object]:
    async with await shale.open(url) as db:
        store = await PStore.open(db, ("bench",))
        started = time.perf_counter()
        for start in range(0, len(corpus.texts), batch):
            chunk = corpus.texts[start : start + batch]
            documents = [(start + i, Counter(tokenize(text))) for i, text in enumerate(chunk)]
            await db.transact(store.index_many, documents)
        indexed = time.perf_counter() - started
        matches = [await _all_matches(db, store, query) for query in corpus.queries]
        started = time.perf_counter()
        tops = [await _top(db, store, query) for query in corpus.queries]
        searched = time.perf_counter() - started
    return {"index": indexed, "search": searched, "matches": matches, "tops": tops}


async def _all_matches(db: shale.Database, store: PStore, query: list[str]) -> set[int]:
    async with db.transaction() as tr:
        hits = await store.search(tr, query, limit=1 << 30, ranking="count")
    return {hit.docuid for hit in hits}


async def _top(db: shale.Database, store: PStore, query: list[str]) -> list[int]:
    async with db.transaction() as tr:
        return [hit.docuid for hit in await store.search(tr, query, limit=LIMIT)]


# -- FTS5 ----------------------------------------------------------------------------------


def _fts5(path: str, corpus: Corpus, batch: int) -> dict[str, object]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE VIRTUAL TABLE t USING fts5(body)")
        started = time.perf_counter()
        for start in range(0, len(corpus.texts), batch):
            chunk = corpus.texts[start : start + batch]
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO t (rowid, body) VALUES (?, ?)",
                ((start + i, text) for i, text in enumerate(chunk)),
            )
            conn.execute("COMMIT")
        indexed = time.perf_counter() - started
        every = "SELECT rowid FROM t WHERE t MATCH ?"
        matches = [{row[0] for row in conn.execute(every, (_match(q),))} for q in corpus.queries]
        best = "SELECT rowid FROM t WHERE t MATCH ? ORDER BY bm25(t) LIMIT ?"
        started = time.perf_counter()
        tops = [[row[0] for row in conn.execute(best, (_match(q), LIMIT))] for q in corpus.queries]
        searched = time.perf_counter() - started
    finally:
        conn.close()
    return {"index": indexed, "search": searched, "matches": matches, "tops": tops}


def _match(query: list[str]) -> str:
    return " AND ".join(f'"{term}"' for term in query)


# -- report --------------------------------------------------------------------------------


def _validate(name: str, got: dict[str, object], reference: dict[str, object]) -> None:
    """pstore must find exactly FTS5's documents for every AND query."""
    ours, theirs = got["matches"], reference["matches"]
    assert isinstance(ours, list) and isinstance(theirs, list)
    if sum(len(m) for m in theirs) == 0:
        raise RuntimeError("no query matched anything: the corpus or the queries are broken")
    for i, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
        if mine != other:
            raise RuntimeError(
                f"{name}: query {i} matched {len(mine)} documents, FTS5 {len(other)} "
                f"({len(mine ^ other)} differ)"
            )


def _overlap(got: dict[str, object], reference: dict[str, object]) -> float:
    ours, theirs = got["tops"], reference["tops"]
    assert isinstance(ours, list) and isinstance(theirs, list)
    shared = sum(len(set(a) & set(b)) for a, b in zip(ours, theirs, strict=True))
    return shared / max(1, sum(len(b) for b in theirs))


def _row(
    system: str, result: dict[str, object], reference: dict[str, object], docs: int, queries: int
) -> dict[str, object]:
    index, search = result["index"], result["search"]
    ref_index, ref_search = reference["index"], reference["search"]
    assert isinstance(index, float) and isinstance(search, float)
    assert isinstance(ref_index, float) and isinstance(ref_search, float)
    return {
        "system": system,
        "docs/s indexed": round(docs / index),
        "× FTS5 (index)": round(ref_index / index, 3),
        "queries/s": round(queries / search),
        "× FTS5 (search)": round(ref_search / search, 3),
        "top-10 overlap": f"{_overlap(result, reference):.0%}",
    }


def run(
    docs: int = DEFAULT_DOCS, queries: int = DEFAULT_QUERIES, batch: int = DEFAULT_BATCH
) -> list[dict[str, object]]:
    """One row per system; ratios are pstore's rate over FTS5's (above 1: faster)."""
    corpus = Corpus.make(docs, queries)
    with tempfile.TemporaryDirectory(prefix="shale-bench-") as tmp:
        reference = _fts5(os.path.join(tmp, "fts5.db"), corpus, batch)
        on_sqlite = asyncio.run(_shale(f"sqlite:///{tmp}/pstore.db", corpus, batch))
    in_memory = asyncio.run(_shale("memory://", corpus, batch))
    _validate("pstore on sqlite://", on_sqlite, reference)
    _validate("pstore on memory://", in_memory, reference)
    return [
        _row(FTS5, reference, reference, docs, queries),
        _row("pstore, sqlite://", on_sqlite, reference, docs, queries),
        _row("pstore, memory://", in_memory, reference, docs, queries),
    ]


def describe(
    docs: int = DEFAULT_DOCS, queries: int = DEFAULT_QUERIES, batch: int = DEFAULT_BATCH
) -> str:
    return (
        f"{docs:,} documents of {WORDS[0]}-{WORDS[1]} words (Zipf s={ZIPF} over "
        f"{VOCABULARY:,} words, seed {SEED}), {batch} per transaction; {queries} AND "
        f"queries of 1-3 terms, top {LIMIT} by BM25; every query's match set checked equal "
        f"to FTS5's; SQLite {sqlite3.sqlite_version}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_pstore", description=__doc__)
    parser.add_argument("--docs", type=int, default=DEFAULT_DOCS, help="documents to index")
    parser.add_argument("--queries", type=int, default=DEFAULT_QUERIES, help="queries to run")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="documents per commit")
    args = parser.parse_args(argv)
    from bench.run import table

    print(describe(args.docs, args.queries, args.batch), end="\n\n")
    print(table(run(args.docs, args.queries, args.batch)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
