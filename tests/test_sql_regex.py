"""Regex filters in SQL: the literal analysis, and exactness against RE2 on real databases.

On SQLite `regex` must select exactly RE2's matches; on every dialect `regex_candidates`
must select at least them (the gateway re-checks). Patterns and texts are drawn at random
(seeded) from pieces that catch the classic mistakes: LIKE's `%` `_` and escape
character, case, non-ASCII text, newlines, alternation, optional and repeated atoms.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import pytest
import re2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from adapters.base import Compare, Plan
from adapters.sql import SqlAdapter, SqlOptions
from adapters.sql_regex import analyse, like_pattern, prefix_successor, re2_search

PG_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"

PIECES = [
    "a", "b", "A", "%", "_", "!", ".", "é", "1", "\\.", "\\%", "[ab]", "[^a]", "(a|b)",
    "(?:ab)+", "a*", "b?", "a+", "\\d", "\\w", "x{2}", "^", "$", "|", "(?i)a", "\\bA",
]  # fmt: skip
TEXT_CHARS = "aAbB%_!.é1x \n"


def random_patterns(count: int, seed: int = 678) -> list[str]:
    rng = random.Random(seed)
    out = ["^a", "a", "^a%", "_", "!", "^é", "^A_!", "a.b", "^(a|b)", "^a+b", "%$", "^$"]
    while len(out) < count:
        pattern = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 4)))
        try:
            re2.compile(pattern)
        except re2.error:
            continue
        out.append(pattern)
    return out


def random_texts(count: int, seed: int = 15) -> list[str]:
    rng = random.Random(seed)
    out = ["", "a", "A", "a%", "a_!", "é", "ab", "ba", "a\nb", "xx", "A_!x", "a.b", "a1b"]
    while len(out) < count:
        out.append("".join(rng.choice(TEXT_CHARS) for _ in range(rng.randint(0, 6))))
    return out


@pytest.mark.parametrize(
    ("pattern", "prefix", "fragments", "literal_only"),
    [
        ("^INV24-0009", "INV24-0009", (), True),
        ("Roaming", "", ("Roaming",), True),
        ("^BA-0000[12]", "BA-0000", (), False),
        ("^ab+c", "ab", ("c",), False),
        ("^ab*c", "a", ("c",), False),
        ("^ab?c", "a", ("c",), False),
        ("a\\.b(c|d)ef{2,3}g", "", ("a.b", "ef", "g"), False),
        ("^INV24$", "INV24", (), False),
        ("^a|^b", "", (), False),  # alternation at the top: nothing is required
        ("(?i)inv", "", (), False),  # flags change what literals mean: not read
        ("\\Qa.b\\E", "", (), False),
        ("x*y", "", ("y",), False),
        ("^\\d+-x", "", ("-x",), False),
    ],
)
def test_literals_every_match_contains(
    pattern: str, prefix: str, fragments: tuple[str, ...], literal_only: bool
) -> None:
    facts = analyse(pattern)
    assert (facts.prefix, facts.fragments, facts.literal_only) == (prefix, fragments, literal_only)


def test_the_analysis_never_claims_a_literal_a_match_lacks() -> None:
    texts = random_texts(300)
    for pattern in random_patterns(400):
        facts = analyse(pattern)
        compiled = re2.compile(pattern)
        for value in texts:
            if not compiled.search(value):
                continue
            assert value.startswith(facts.prefix), (pattern, value)
            rest = value[len(facts.prefix) :]
            for fragment in facts.fragments:
                found = rest.find(fragment)
                assert found >= 0, (pattern, value, fragment)
                rest = rest[found + len(fragment) :]


def test_like_patterns_escape_what_like_reads() -> None:
    assert like_pattern("a%b", ("_", "!")) == "a!%b%!_%!!%"
    assert like_pattern("", ()) is None
    assert prefix_successor("INV24-0009") == "INV24-000:"
    assert prefix_successor("a\U0010ffff") == "b"
    assert prefix_successor("\U0010ffff") is None
    assert prefix_successor("\ud7ff") == "\ue000"  # past the surrogates


def test_the_sql_function_is_re2_on_text_only() -> None:
    assert re2_search("^a", "ab") == 1
    assert re2_search("^a", "ba") == 0
    assert re2_search("^1", 12) == 0  # a number is no text, as in the gateway
    assert re2_search("^a", None) == 0
    assert re2_search("(", "(") == 0  # refused by RE2: matches nothing


async def _seed(url: str, texts: list[str]) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE words (id INTEGER PRIMARY KEY, word TEXT)"))
            for number, word in enumerate(texts):
                await conn.execute(
                    text("INSERT INTO words (id, word) VALUES (:id, :word)"),
                    {"id": number, "word": word},
                )
            await conn.execute(text("INSERT INTO words (id, word) VALUES (-1, NULL)"))
    finally:
        await engine.dispose()


async def _selected(url: str, patterns: list[str], op: str) -> dict[str, set[int]]:
    adapter = SqlAdapter("words", SqlOptions(url=url))
    await adapter.open()
    try:
        source = await adapter.bind({"table": "words", "key": "id"})
        assert source.can_push("word", op)
        out = {}
        for pattern in patterns:
            page = await source.page(Plan(Compare("word", op, pattern)))
            out[pattern] = {r["id"] for r in page.records}
        return out
    finally:
        await adapter.close()


def _expected(patterns: list[str], texts: list[str]) -> dict[str, set[int]]:
    return {p: {i for i, t in enumerate(texts) if re2.compile(p).search(t)} for p in patterns}


def test_sqlite_runs_regex_exactly_as_re2(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'words.sqlite'}"
    texts, patterns = random_texts(200), random_patterns(150)
    asyncio.run(_seed(url, texts))
    expected = _expected(patterns, texts)
    assert any(expected.values()) and not all(len(v) == len(texts) for v in expected.values())
    assert asyncio.run(_selected(url, patterns, "regex")) == expected
    candidates = asyncio.run(_selected(url, patterns, "regex_candidates"))
    assert all(candidates[p] >= expected[p] for p in patterns)


async def _admin(statement: str) -> None:
    engine = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture
def pg_url() -> Any:
    name = f"tmf678_regex_{os.getpid()}"
    try:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(
            f"PostgreSQL not reachable at 127.0.0.1:5432 as postgres ({type(exc).__name__});"
            " start one to run this test"
        )
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_postgresql_candidates_hold_every_re2_match(pg_url: str) -> None:
    texts, patterns = random_texts(200), random_patterns(150)
    asyncio.run(_seed(pg_url, texts))
    expected = _expected(patterns, texts)
    candidates = asyncio.run(_selected(pg_url, patterns, "regex_candidates"))
    missing = {p: expected[p] - candidates[p] for p in patterns if expected[p] - candidates[p]}
    assert not missing
    # ... and they do narrow: a prefix or a literal leaves most rows out.
    assert len(candidates["^a%"]) < len(texts) // 4


async def _exact_on_postgresql(url: str, patterns: list[str]) -> dict[str, set[int] | None]:
    """Each pattern's rows where the adapter takes it as exact (`regex`), else None."""
    adapter = SqlAdapter("words", SqlOptions(url=url))
    await adapter.open()
    try:
        source = await adapter.bind({"table": "words", "key": "id"})
        out: dict[str, set[int] | None] = {}
        for pattern in patterns:
            term = Compare("word", "regex", pattern)
            if not source.accepts(term):
                out[pattern] = None
                continue
            page = await source.page(Plan(term))
            out[pattern] = {r["id"] for r in page.records}
        return out
    finally:
        await adapter.close()


def test_postgresql_answers_literal_patterns_exactly(pg_url: str) -> None:
    """A literal prefix or one literal is its LIKE: exact on PostgreSQL, no RE2 re-check."""
    texts = random_texts(200)
    from_texts = [f"^{re2.escape(t[:2])}" for t in texts[:20] if t] + [
        re2.escape(t[1:3]) for t in texts[20:40] if len(t) > 2
    ]
    plain = ["^a_", "%", "_b", "^A", "ab"]  # LIKE's own wildcards, and case
    others = ["^a.", "a|b", "(?i)a", "[ab]"]
    asyncio.run(_seed(pg_url, texts))
    found = asyncio.run(_exact_on_postgresql(pg_url, from_texts + plain + others))
    expected = _expected(from_texts + plain, texts)
    taken = {p: rows for p, rows in found.items() if rows is not None}
    assert taken == {p: expected[p] for p in taken}
    assert set(plain) <= set(taken) and any(taken.values())
    assert all(found[p] is None for p in others)  # left to the candidates and RE2
