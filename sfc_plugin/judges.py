"""Judges: a verdict on each circuit feature from its dashboard, for SHIFT and for pruning
traced circuits.

A *judge* is a callable from a :class:`FeatureDescription` (a dashboard as text) to True or
False. In SHIFT (Marks et al., section 4) True means *spurious*: the feature is about the
unintended signal (gender) rather than the intended one (profession), and is ablated; the
paper made that call by hand. In tracing (``tracing.pruning``) True means *prune*: the feature
is not about the behaviour traced. The interface is the same:

- :func:`marked_judge`: the human path, the node ids someone marked by hand;
- :func:`lexicon_judge`: offline and deterministic, word lists for the two signals;
- :func:`keyword_judge`: offline and deterministic, one word list for the task (relevance);
- :func:`llm_judge`: a language model behind an OpenAI-compatible chat-completions endpoint
  (standard library only), asked :data:`PROMPT` or a prompt of the caller's.

:func:`judge_features` runs a judge over descriptions and normalises what it returns into
:class:`Judgement` records. See docs/judges.md.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from sfc_plugin.datasets.bias_in_bios import FEMALE_NAMES, MALE_NAMES
from sfc_plugin.nodes import node_id, parse_node_id

if TYPE_CHECKING:
    import pandas as pd

    from sfc_plugin.frontend.dashboards import Dashboard, FeatureIndex


@dataclass(frozen=True)
class FeatureDescription:
    """What a judge sees of one circuit feature: its dashboard as text, and its effect.

    ``contexts`` are the top-activating contexts (strongest first) with the max-activating
    token marked ``[[token]]``; ``top_tokens[i]`` is that token of ``contexts[i]``."""

    node: str
    hook_name: str
    feature: int
    effect: float
    contexts: tuple[str, ...] = ()
    top_tokens: tuple[str, ...] = ()
    promoted: tuple[str, ...] = ()
    suppressed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.node != node_id(self.hook_name, self.feature, None):
            raise ValueError(
                f"node {self.node!r} is not feature {self.feature} of {self.hook_name!r} "
                "summed over positions"
            )
        for name in ("contexts", "top_tokens", "promoted", "suppressed"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"node {self.node!r}: {name} must be a sequence of strings")
            object.__setattr__(self, name, tuple(value))

    @classmethod
    def from_dashboard(
        cls, dashboard: Dashboard, effect: float, n_contexts: int = 10
    ) -> FeatureDescription:
        """The first ``n_contexts`` contexts, promoted and suppressed tokens of a dashboard."""
        if isinstance(n_contexts, bool) or not isinstance(n_contexts, int) or n_contexts < 1:
            raise ValueError(f"n_contexts must be a positive integer, got {n_contexts!r}")
        views = dashboard.contexts[:n_contexts]
        for view in views:
            if not 0 <= view.focus < len(view.tokens):
                raise ValueError(
                    f"node {dashboard.node!r}: context focus {view.focus} is outside its "
                    f"{len(view.tokens)} tokens"
                )
        return cls(
            node=dashboard.node,
            hook_name=dashboard.site,
            feature=dashboard.feature,
            effect=float(effect),
            contexts=tuple(_marked(v.tokens, v.focus) for v in views),
            top_tokens=tuple(v.tokens[v.focus] for v in views),
            promoted=tuple(t.token for t in dashboard.promoted),
            suppressed=tuple(t.token for t in dashboard.suppressed),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of all fields."""
        return asdict(self)


def _marked(tokens: list[str], focus: int) -> str:
    """The tokens as text, ``tokens[focus]`` marked ``[[...]]`` (leading whitespace outside)."""
    token = tokens[focus]
    word = token.lstrip()
    mark = f"{token[: len(token) - len(word)]}[[{word}]]" if word else f"[[{token}]]"
    return "".join(tokens[:focus]) + mark + "".join(tokens[focus + 1 :])


@dataclass(frozen=True)
class Judgement:
    """A judge's verdict on one node: ``spurious`` (ablate it), why, and which judge said so."""

    node: str
    spurious: bool
    reason: str = ""
    judge: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.spurious, bool):
            raise TypeError(f"node {self.node!r}: spurious must be a bool, got {self.spurious!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Judgement:
        """The inverse of :meth:`to_dict` (``reason`` and ``judge`` may be missing)."""
        missing = [k for k in ("node", "spurious") if k not in data]
        if missing:
            raise ValueError(f"judgement {data!r} lacks {missing}")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


Judge = Callable[[FeatureDescription], bool | tuple[bool, str] | Judgement]
"""A judge: True (or ``(True, reason)``, or a spurious :class:`Judgement`) = spurious."""


class _NamedJudge:
    """A judge function with a name (recorded in each :class:`Judgement`)."""

    def __init__(self, name: str, decide: Callable[[FeatureDescription], tuple[bool, str]]):
        self.name = name
        self._decide = decide

    def __call__(self, description: FeatureDescription) -> tuple[bool, str]:
        return self._decide(description)

    def __repr__(self) -> str:
        return f"<judge {self.name!r}>"


def judge_features(
    descriptions: Iterable[FeatureDescription], judge: Judge, *, progress: bool = True
) -> list[Judgement]:
    """Ask ``judge`` about every description, in order; one :class:`Judgement` each."""
    name = str(getattr(judge, "name", None) or getattr(judge, "__name__", type(judge).__name__))
    out = []
    for d in tqdm(list(descriptions), desc=f"judge {name}", disable=not progress):
        try:
            result = judge(d)
        except Exception as e:
            raise RuntimeError(f"judge {name!r} failed on node {d.node!r}: {e}") from e
        out.append(_judgement(result, d.node, name))
    return out


def describe_features(
    features: pd.DataFrame, index: FeatureIndex | None, n_contexts: int = 10
) -> list[FeatureDescription]:
    """One description per row of a circuit's ``features`` (``node, hook_name, feature,
    effect``), from its dashboard in ``index`` (None: node and effect only)."""
    out = []
    for node, h, i, effect in zip(
        features.node, features.hook_name, features.feature, features.effect
    ):
        if index is None:
            out.append(FeatureDescription(str(node), str(h), int(i), float(effect)))
        else:
            dashboard = index.dashboard(str(h), int(i))
            out.append(FeatureDescription.from_dashboard(dashboard, float(effect), n_contexts))
    return out


def _judgement(result: object, node: str, name: str) -> Judgement:
    if isinstance(result, Judgement):
        if result.node != node:
            raise ValueError(
                f"judge {name!r} asked about node {node!r} returned a Judgement for {result.node!r}"
            )
        return result if result.judge else replace(result, judge=name)
    if isinstance(result, bool):
        return Judgement(node, result, "", name)
    if isinstance(result, tuple) and [type(x) for x in result] == [bool, str]:
        return Judgement(node, result[0], result[1], name)
    raise TypeError(
        f"judge {name!r} returned {repr(result):.200} for node {node!r}; a judge returns a bool "
        "(True = spurious), a (bool, reason) tuple or a Judgement"
    )


def marked_judge(nodes: Iterable[str], name: str = "human") -> Judge:
    """The human judge: spurious iff the node is one of ``nodes`` (summed feature ids such as
    ``blocks.3.hook_resid_post/f12``; SHIFT ablates a feature at every position)."""
    if isinstance(nodes, str):
        raise TypeError("nodes must be a collection of node ids, not one string")
    marked = set()
    for node in nodes:
        hook, feature, position = parse_node_id(node)
        if position is not None:
            raise ValueError(
                f"node {node!r} has a position; mark the feature summed over positions "
                f"({node_id(hook, feature, None)!r}), SHIFT ablates it everywhere"
            )
        if feature is None:
            raise ValueError(f"node {node!r} is an error node; judges decide features")
        marked.add(node)
    return _NamedJudge(
        name, lambda d: (True, "marked by hand") if d.node in marked else (False, "not marked")
    )


# ---------------------------------------------------------------------------- lexicon judge

GENDER_WORDS: frozenset[str] = frozenset(
    (
        "he she his her hers him himself herself mr mrs ms miss sir madam "
        "man woman men women male female males females boy girl boys girls gentleman lady "
        "gentlemen ladies guy gal husband wife husbands wives mother father mothers fathers "
        "mom dad mum son daughter sons daughters brother sister brothers sisters aunt uncle "
        "niece nephew grandmother grandfather grandson granddaughter king queen prince "
        "princess bride groom boyfriend girlfriend masculine feminine maternal paternal"
    ).split()
    + [n.lower() for n in MALE_NAMES + FEMALE_NAMES]
)
"""The unintended signal of the paper's SHIFT: pronouns, titles, gendered nouns, first names."""

PROFESSION_WORDS: frozenset[str] = frozenset(
    (
        "professor professors prof university universities college faculty department dean "
        "research researcher researchers scholar scholars academic academia tenure students "
        "student teaching teaches teach taught lecture lectures lecturer course courses "
        "seminar curriculum graduate undergraduate phd doctoral dissertation thesis "
        "postdoctoral journal journals papers publications published laboratory lab science "
        "sciences scientist institute grant grants mathematics physics chemistry biology "
        "economics engineering "
        "nurse nurses nursing rn patients patient hospital hospitals clinic clinics clinical "
        "care caring healthcare health medical medicine ward wards icu emergency pediatric "
        "paediatric surgical surgery bedside triage oncology cardiac doctor doctors dr "
        "physician physicians treatment wound medication medications registered practitioner"
    ).split()
)
"""The intended signal of the paper's SHIFT: words about academia and nursing/medicine."""

_WORD = re.compile(r"[^\W\d_]+")  # a run of letters


def _words(text: str) -> list[str]:
    """Lower-case words of a token or text (Ġ / ▁ space markers and punctuation dropped)."""
    return _WORD.findall(text.replace("Ġ", " ").replace("▁", " ").lower())


def _evidence(d: FeatureDescription, window: int) -> dict[str, list[list[str]]]:
    """Evidence items (each a list of words) by kind: top tokens, words near each context's
    ``[[mark]]``, promoted tokens. Kinds without items are left out."""
    near = []
    for context in d.contexts:
        before, mark, after = context.partition("[[")
        if not mark:
            continue
        after = after.partition("]]")[2]
        near += [[w] for w in (_words(before)[-window:] if window else []) + _words(after)[:window]]
    kinds = {"top": [_words(t) for t in d.top_tokens], "near": near}
    kinds["promoted"] = [_words(t) for t in d.promoted]
    return {k: items for k, items in kinds.items() if items}


_WEIGHTS = {"top": 2.0, "near": 1.0, "promoted": 1.0}


def _check_lexicon(words: Iterable[str], argument: str) -> frozenset[str]:
    if isinstance(words, str):
        raise TypeError(f"{argument} must be a collection of words, not one string")
    out = frozenset(w.lower() for w in words)
    bad = sorted(w for w in out if not _WORD.fullmatch(w))
    if bad or not out:
        raise ValueError(f"{argument} must be non-empty single words (letters only): {bad}")
    return out


def _lexicon_score(
    evidence: dict[str, list[list[str]]], lexicon: frozenset[str]
) -> tuple[float, str]:
    """The weighted share of the evidence items matching ``lexicon`` (``lexicon_judge``),
    and the matched words with their counts (``"she x3, her x1"``, or ``"none"``)."""
    total = sum(_WEIGHTS[k] for k in evidence) or 1.0
    found: Counter[str] = Counter()
    score = 0.0
    for kind, items in evidence.items():
        hits = [[w for w in item if w in lexicon] for item in items]
        found.update(w for hit in hits for w in hit)
        score += _WEIGHTS[kind] * sum(bool(h) for h in hits) / len(items) / total
    return score, ", ".join(f"{w} x{n}" for w, n in found.most_common()) or "none"


def lexicon_judge(
    spurious_words: Iterable[str] = GENDER_WORDS,
    relevant_words: Iterable[str] = PROFESSION_WORDS,
    *,
    min_share: float = 0.25,
    min_ratio: float = 2.0,
    window: int = 3,
    name: str = "lexicon",
) -> Judge:
    """An offline, deterministic judge from two word lists.

    Evidence items, by kind: each context's max-activating token (``top``), each of the
    ``window`` words before and after each context's mark (``near``), each promoted token
    (``promoted``). An item matches a lexicon when one of its words (lower-cased, Ġ/▁ markers
    and punctuation dropped) is in it. A lexicon's score is the weighted mean over the kinds
    present of the fraction of that kind's items that match, weights top 2, near 1,
    promoted 1 (the top tokens count as much as the rest). Spurious iff the spurious score is
    at least ``min_share`` and at least ``min_ratio`` times the relevant score: by default a
    quarter of the evidence (e.g. half the top tokens and nothing else) is about the
    unintended signal and it is at least twice the evidence for the intended one."""
    spurious, relevant = (
        _check_lexicon(spurious_words, "spurious_words"),
        _check_lexicon(relevant_words, "relevant_words"),
    )
    if spurious & relevant:
        raise ValueError(f"words in both lexicons: {sorted(spurious & relevant)}")
    for ok, what in [
        (0 < min_share <= 1, f"min_share must be in (0, 1], got {min_share!r}"),
        (min_ratio >= 1, f"min_ratio must be >= 1, got {min_ratio!r}"),
        (isinstance(window, int) and window >= 0, f"window must be an int >= 0, got {window!r}"),
    ]:
        if not ok:
            raise ValueError(what)

    def decide(d: FeatureDescription) -> tuple[bool, str]:
        evidence = _evidence(d, window)
        (g, spurious_found), (r, relevant_found) = (
            _lexicon_score(evidence, lexicon) for lexicon in (spurious, relevant)
        )
        verdict = g >= min_share and g >= min_ratio * r
        return verdict, (
            f"spurious score {g:.2f}, relevant score {r:.2f} (spurious iff >= {min_share:g} "
            f"and >= {min_ratio:g} x relevant); spurious words: {spurious_found}; "
            f"relevant words: {relevant_found}"
        )

    return _NamedJudge(name, decide)


def keyword_judge(
    words: Iterable[str],
    *,
    min_share: float = 0.25,
    window: int = 3,
    name: str = "keywords",
) -> Judge:
    """An offline, deterministic judge of relevance to a task given by its words: True
    (prune / spurious) iff the share of the evidence matching ``words`` is below
    ``min_share``. Evidence and its weighting as in :func:`lexicon_judge`: by default a
    feature stays when a quarter of what its dashboard shows (e.g. half its top tokens) is
    one of the task's words."""
    lexicon = _check_lexicon(words, "words")
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share must be in (0, 1], got {min_share!r}")
    if not (isinstance(window, int) and window >= 0):
        raise ValueError(f"window must be an int >= 0, got {window!r}")

    def decide(d: FeatureDescription) -> tuple[bool, str]:
        score, words_found = _lexicon_score(_evidence(d, window), lexicon)
        return score < min_share, (
            f"task score {score:.2f} (pruned iff < {min_share:g}); task words: {words_found}"
        )

    return _NamedJudge(name, decide)


# -------------------------------------------------------------------------------- LLM judge

PROMPT = """\
A linear probe on a language model should classify {intended}. Its training data confounded \
{intended} with {unintended}, so some features it relies on may be about {unintended} instead. \
Below is one feature of the model (a sparse-autoencoder latent): the text contexts where it \
activates most, with the most-activating token marked [[like this]], and the output tokens it \
promotes and suppresses.

Top-activating contexts:
{contexts}

Most-activating tokens: {top_tokens}
Promoted tokens: {promoted}
Suppressed tokens: {suppressed}

Is this feature mainly about {unintended} (SPURIOUS) or about {intended} or anything else \
(RELEVANT)? Answer with the single word SPURIOUS or RELEVANT on the first line and a one-line \
reason on the second line."""
"""The user message of :func:`llm_judge` (``str.format`` fields in braces)."""


def _tokens(tokens: tuple[str, ...]) -> str:
    return ", ".join(json.dumps(t, ensure_ascii=False) for t in tokens) or "(none)"


def _prompt(d: FeatureDescription, intended: str, unintended: str, prompt: str = PROMPT) -> str:
    contexts = "\n".join(f"{i}. {c.replace(chr(10), '↵')}" for i, c in enumerate(d.contexts, 1))
    return prompt.format(
        intended=intended,
        unintended=unintended,
        contexts=contexts or "(none)",
        top_tokens=_tokens(d.top_tokens),
        promoted=_tokens(d.promoted),
        suppressed=_tokens(d.suppressed),
    )


def _parse_answer(answer: str) -> tuple[bool, str] | None:
    """``(spurious, reason)`` from the reply, None unless its first word is spurious/relevant
    (any case, markdown around it allowed; a ``<think>`` block is skipped)."""
    text = re.sub(r"<think>.*?</think>", "", answer, flags=re.S)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    m = re.match(r"[\W_]*([^\W\d_]+)(.*)", lines[0]) if lines else None
    if not m or m[1].lower() not in ("spurious", "relevant"):
        return None
    reason = m[2].strip(" *_:.-") or (lines[1] if len(lines) > 1 else "")
    return m[1].lower() == "spurious", re.sub(r"^reason\s*:\s*", "", reason, flags=re.I)


def _post(request: urllib.request.Request, timeout: float, retries: int, node: str) -> str:
    """The reply body; a failed request is retried ``retries`` times, then RuntimeError."""
    attempt = 0
    while True:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read().decode("utf-8", "replace")
        except OSError as e:  # URLError, HTTPError, timeouts, refused connections
            if attempt == retries:
                detail = str(e)
                if isinstance(e, urllib.error.HTTPError):
                    detail += f": {e.read().decode('utf-8', 'replace')[:300]!r}"
                raise RuntimeError(
                    f"LLM judge on node {node!r}: request to {request.full_url} failed "
                    f"({attempt + 1} attempt(s)): {detail}"
                ) from e
            time.sleep(2**attempt)
            attempt += 1


def llm_judge(
    *,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    intended: str = "profession (professor vs. nurse)",
    unintended: str = "gender",
    timeout: float = 60.0,
    retries: int = 0,
    name: str | None = None,
    prompt: str = PROMPT,
) -> Judge:
    """A judge asking a chat model behind an OpenAI-compatible API (``POST
    {base_url}/chat/completions``, temperature 0) with :data:`PROMPT`. Defaults come from
    ``SFC_JUDGE_BASE_URL`` (else ``OPENAI_BASE_URL``), ``SFC_JUDGE_MODEL`` and
    ``SFC_JUDGE_API_KEY`` (else ``OPENAI_API_KEY``; no key sends no Authorization header).
    Failed requests are retried ``retries`` times (after 1, 2, 4, ... s). ``prompt``: the
    user message, a ``str.format`` template with the fields of :data:`PROMPT` (any subset);
    the reply must start with SPURIOUS (True) or RELEVANT (False)."""
    env = os.environ.get
    base_url = base_url or env("SFC_JUDGE_BASE_URL") or env("OPENAI_BASE_URL")
    if not base_url:
        raise ValueError(
            "llm_judge: no base_url; pass base_url= or set SFC_JUDGE_BASE_URL (or "
            "OPENAI_BASE_URL), e.g. http://localhost:8000/v1"
        )
    model = model or env("SFC_JUDGE_MODEL")
    if not model:
        raise ValueError("llm_judge: no model; pass model= or set SFC_JUDGE_MODEL")
    api_key = api_key or env("SFC_JUDGE_API_KEY") or env("OPENAI_API_KEY")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
    fields = dict.fromkeys(
        ("intended", "unintended", "contexts", "top_tokens", "promoted", "suppressed"), ""
    )
    try:
        prompt.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"llm_judge: prompt has an unknown field or bad braces ({e!r}); its fields are "
            f"{sorted(fields)}"
        ) from None
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"

    def decide(d: FeatureDescription) -> tuple[bool, str]:
        messages = [{"role": "user", "content": _prompt(d, intended, unintended, prompt)}]
        body = json.dumps({"model": model, "messages": messages, "temperature": 0}).encode()
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        reply = _post(request, timeout, retries, d.node)
        try:
            answer = json.loads(reply)["choices"][0]["message"]["content"]
            parsed = _parse_answer(answer)
        except (ValueError, KeyError, IndexError, TypeError):
            raise RuntimeError(
                f"LLM judge on node {d.node!r}: not a chat-completions reply: {reply[:300]!r}"
            ) from None
        if parsed is None:
            raise RuntimeError(
                f"LLM judge on node {d.node!r}: answer does not start with SPURIOUS or "
                f"RELEVANT: {answer[:300]!r}"
            )
        return parsed

    return _NamedJudge(name or f"llm:{model}", decide)
