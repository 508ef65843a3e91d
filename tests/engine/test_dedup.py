"""Streaming de-duplication: exact after normalization, near-duplicates by n-gram Jaccard."""
import asyncio

import pytest

from engine.dedup import Deduper, jaccard, normalize, shingles


def test_normalize_and_shingles():
    assert normalize("  Use NO commas!! ") == "use no commas"
    assert shingles("a b c", 2) == {"a b", "b c"}
    assert shingles("one", 2) == {"one"}


def test_exact_duplicates_after_normalization():
    d = Deduper()
    assert d.check("Do not use any commas.") is None
    assert d.check("do NOT use any commas") == "duplicate"
    assert len(d) == 1


def test_near_duplicate_respects_threshold():
    a = "Your reply must contain at least three bullet points in markdown format"
    b = "Your reply must contain at least three bullet points in markdown style"
    sim = jaccard(shingles(a, 2), shingles(b, 2))
    assert 0.7 < sim < 1
    strict = Deduper(threshold=0.95)
    assert strict.check(a) is None and strict.check(b) is None        # below 0.95: both kept
    loose = Deduper(threshold=0.7)
    assert loose.check(a) is None and loose.check(b) == "near_duplicate"


def test_different_numbers_are_not_near_duplicates_at_default():
    d = Deduper()
    assert d.check("Your response must contain at least 3 bullet points") is None
    assert d.check("Your response must contain at least 5 bullet points") is None


def test_unrelated_texts_pass_many_items():
    d = Deduper(threshold=0.7)
    texts = [f"Mention the word {w} exactly {n} times in the reply" for w in ("apple", "river", "cloud")
             for n in ("two", "four")]
    assert [d.check(t) for t in texts].count(None) == len(texts)
    assert d.check(texts[0]) == "duplicate"


async def test_concurrent_checks_keep_exactly_one():
    d = Deduper()

    async def check(i):
        await asyncio.sleep(0)
        return await asyncio.to_thread(d.check, "Write everything in lowercase letters only")

    results = await asyncio.gather(*(check(i) for i in range(8)))
    assert results.count(None) == 1 and results.count("duplicate") == 7


def test_bad_threshold():
    with pytest.raises(ValueError):
        Deduper(threshold=0)
