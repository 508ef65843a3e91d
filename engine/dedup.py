"""Streaming de-duplication of instruction texts: exact (normalized) plus near-duplicate.

Near-duplicates are found with MinHash LSH (datasketch) over word n-gram shingles; LSH only
proposes candidates, which are confirmed with the exact Jaccard similarity of the shingle
sets, so the threshold means what it says. The index grows as items arrive, and
check-and-insert is one locked step, so concurrent stages can share one Deduper.
"""
from __future__ import annotations

import hashlib
import re
import threading

from datasketch import MinHash, MinHashLSH


def normalize(text: str) -> str:
    """Lowercase, punctuation to spaces, collapsed whitespace."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def shingles(text: str, n: int) -> frozenset[str]:
    words = normalize(text).split()
    if len(words) < n:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class Deduper:
    """`check(text)` returns None (new: now indexed) or the reason it is a duplicate."""

    def __init__(self, threshold: float = 0.7, ngram: int = 2, num_perm: int = 128) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"dedup threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.ngram = ngram
        self.num_perm = num_perm
        # LSH is tuned a little below the threshold so it misses fewer true candidates
        self._lsh = MinHashLSH(threshold=max(0.05, threshold * 0.8), num_perm=num_perm)
        self._exact: set[str] = set()
        self._shingles: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._exact)

    def _minhash(self, sh: frozenset[str]) -> MinHash:
        m = MinHash(num_perm=self.num_perm)
        for s in sh:
            m.update(s.encode("utf-8"))
        return m

    def check(self, text: str) -> str | None:
        norm = normalize(text)
        key = hashlib.sha1(norm.encode("utf-8")).hexdigest()
        sh = shingles(text, self.ngram)
        mh = self._minhash(sh)            # outside the lock: the costly part
        with self._lock:
            if key in self._exact:
                return "duplicate"
            for other in self._lsh.query(mh):
                if jaccard(sh, self._shingles[other]) >= self.threshold:
                    return "near_duplicate"
            self._exact.add(key)
            self._shingles[key] = sh
            self._lsh.insert(key, mh)
            return None

    def add(self, text: str) -> bool:
        """Index a text (seeds, known items); True when it was not already covered."""
        return self.check(text) is None
