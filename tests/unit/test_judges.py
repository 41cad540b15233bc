"""Judges (sfc_plugin.judges) on hand-built feature descriptions; the LLM judge
against a fake OpenAI-compatible server on 127.0.0.1 started here (no model, no network)."""

from __future__ import annotations

import json

import pytest

from sfc_plugin import judges
from sfc_plugin.frontend.dashboards import ContextView, Dashboard, TokenEffect
from sfc_plugin.judges import (
    FeatureDescription,
    Judgement,
    judge_features,
    lexicon_judge,
    llm_judge,
    marked_judge,
)

HOOK = "blocks.3.hook_resid_post"


def describe(feature: int, contexts=(), top=(), promoted=(), suppressed=()) -> FeatureDescription:
    return FeatureDescription(
        f"{HOOK}/f{feature}", HOOK, feature, 0.5, contexts, top, promoted, suppressed
    )


GENDERED = describe(
    1,
    ("Mary said that [[she]] would go home", "the doctor told [[her]] that it was late"),
    (" she", " her"),
    (" her", " herself", " the"),
)
PROFESSIONAL = describe(
    2,
    ("she is a [[professor]] at the university", "worked as a [[nurse]] in the hospital"),
    (" professor", " nurse"),
    (" research", " patients", " the"),
)
UNKNOWN = describe(3, ("the cat sat [[on]] the mat", "and so [[on]] she went"), (" on",) * 2)
MIXED = describe(
    4,
    ("[[She]] teaches at the university", "[[He]] works in the clinic"),
    ("She", " He"),
    (" students", " patients"),
)


# ------------------------------------------------------------------------- descriptions


def test_from_dashboard_marks_the_focus_and_keeps_order():
    views = [
        ContextView(3.0, 0, 4, ["The", " nurse", " said", " she", " would"], [0, 0, 1, 3, 0], 3),
        ContextView(2.0, 1, 0, ["Her", " shift", "\n"], [2, 0, 0], 0),
        ContextView(1.0, 2, 1, ["a", "\n", "b"], [0, 1, 0], 1),
    ]
    promoted = [TokenEffect(" her", 1, 2.0), TokenEffect(" she", 2, 1.0)]
    dash = Dashboard(HOOK, 7, 100, 9, views, [], [], promoted, [TokenEffect(" him", 3, -1.0)])
    d = FeatureDescription.from_dashboard(dash, effect=-0.25, n_contexts=2)
    assert (d.node, d.hook_name, d.feature, d.effect) == (f"{HOOK}/f7", HOOK, 7, -0.25)
    assert d.contexts == ("The nurse said [[she]] would", "[[Her]] shift\n")
    assert d.top_tokens == (" she", "Her")
    assert (d.promoted, d.suppressed) == ((" her", " she"), (" him",))
    assert FeatureDescription.from_dashboard(dash, 0.0).contexts[2] == "a[[\n]]b"
    assert json.loads(json.dumps(d.to_dict()))["contexts"] == list(d.contexts)
    with pytest.raises(ValueError, match="n_contexts"):
        FeatureDescription.from_dashboard(dash, 0.0, n_contexts=0)


def test_description_checks_its_node():
    with pytest.raises(ValueError, match="f9"):
        FeatureDescription(f"{HOOK}/f9", HOOK, 8, 0.0)
    with pytest.raises(TypeError, match="contexts"):
        FeatureDescription(f"{HOOK}/f8", HOOK, 8, 0.0, contexts="one string")  # type: ignore[arg-type]


def test_judgement_round_trip_and_checks():
    j = Judgement(f"{HOOK}/f1", True, "why", "me")
    assert Judgement.from_dict(json.loads(json.dumps(j.to_dict()))) == j
    assert Judgement.from_dict({"node": "x/f1", "spurious": False}) == Judgement("x/f1", False)
    with pytest.raises(ValueError, match="spurious"):
        Judgement.from_dict({"node": "x/f1"})
    with pytest.raises(TypeError, match="x/f1"):
        Judgement("x/f1", 1)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- judge_features


def test_judge_features_normalises_every_return_form():
    answers = {
        GENDERED.node: True,
        PROFESSIONAL.node: (False, "about nursing"),
        UNKNOWN.node: Judgement(UNKNOWN.node, True, "own", judge="other"),
        MIXED.node: Judgement(MIXED.node, False),
    }

    def oracle(d):
        return answers[d.node]

    out = judge_features([GENDERED, PROFESSIONAL, UNKNOWN, MIXED], oracle, progress=False)
    assert out == [
        Judgement(GENDERED.node, True, "", "oracle"),
        Judgement(PROFESSIONAL.node, False, "about nursing", "oracle"),
        Judgement(UNKNOWN.node, True, "own", "other"),
        Judgement(MIXED.node, False, "", "oracle"),
    ]


def test_judge_name_from_attribute_or_class():
    class Picky:
        def __call__(self, d):
            return False

    named = Picky()
    assert judge_features([GENDERED], named, progress=False)[0].judge == "Picky"
    named.name = "panel"  # type: ignore[attr-defined]
    assert judge_features([GENDERED], named, progress=False)[0].judge == "panel"


@pytest.mark.parametrize(
    "answer, error, shown",
    [
        (None, TypeError, "None"),
        ("spurious", TypeError, "'spurious'"),
        (1, TypeError, "returned 1"),
        ((1, "why"), TypeError, "(1, 'why')"),
        ((True,), TypeError, "(True,)"),
        (Judgement(f"{HOOK}/f99", True), ValueError, "/f99"),
    ],
)
def test_bad_answers_name_the_node_and_the_answer(answer, error, shown):
    with pytest.raises(error, match="/f2") as info:
        judge_features(
            [GENDERED, PROFESSIONAL], lambda d: answer if d.feature == 2 else True, progress=False
        )
    assert shown in str(info.value)


def test_a_failing_judge_names_the_node_and_chains_the_cause():
    def broken(d):
        raise KeyError("boom")

    with pytest.raises(RuntimeError, match=f"{HOOK}/f1.*boom") as info:
        judge_features([GENDERED], broken, progress=False)
    assert isinstance(info.value.__cause__, KeyError)


# ------------------------------------------------------------------------------ marked_judge


def test_marked_judge_says_spurious_exactly_for_listed_nodes():
    judge = marked_judge([GENDERED.node, f"{HOOK}/f50"])
    out = judge_features([GENDERED, PROFESSIONAL], judge, progress=False)
    assert [j.spurious for j in out] == [True, False]
    assert out[0] == Judgement(GENDERED.node, True, "marked by hand", "human")


@pytest.mark.parametrize("bad", ["blocks.3.hook_resid_post", "f12", f"{HOOK}/f12@3", f"{HOOK}/err"])
def test_marked_judge_rejects_bad_ids(bad):
    with pytest.raises(ValueError, match=bad.replace(".", r"\.")):
        marked_judge([GENDERED.node, bad])


def test_marked_judge_rejects_one_string():
    with pytest.raises(TypeError, match="one string"):
        marked_judge(GENDERED.node)


# ----------------------------------------------------------------------------- lexicon_judge


def test_lexicon_judge_finds_the_gendered_feature_only():
    out = judge_features([GENDERED, PROFESSIONAL, UNKNOWN, MIXED], lexicon_judge(), progress=False)
    assert [j.spurious for j in out] == [True, False, False, False]
    assert {j.judge for j in out} == {"lexicon"}


def test_lexicon_scores_follow_the_documented_rule():
    d = describe(5, ("Tom saw [[her]] there",), (" her",), (" she", " the", " a", " an"))
    verdict, reason = lexicon_judge()(d)  # type: ignore[misc]
    # by hand: top 1/1 (weight 2), near 0/3 (tom, saw, there), promoted 1/4 -> 2.25 / 4
    assert reason.startswith(f"spurious score {2.25 / 4:.2f}, relevant score 0.00")
    assert verdict is True
    strict = lexicon_judge(min_share=0.6)(d)
    assert strict[0] is False  # type: ignore[index]


def test_lexicon_reason_lists_matched_words():
    verdict, reason = lexicon_judge()(GENDERED)  # type: ignore[misc]
    assert verdict is True
    for word in ("she", "her x2", "herself", "mary"):
        assert word in reason
    assert "relevant words: none" not in lexicon_judge()(PROFESSIONAL)[1]  # type: ignore[index]
    assert "professor" in lexicon_judge()(PROFESSIONAL)[1]  # type: ignore[index]


def test_lexicon_matches_whole_words_case_insensitively():
    judge = lexicon_judge(["SHE"], ["nurse"], window=0)
    assert judge(describe(6, top=("Ġshe",)))[0] is True  # type: ignore[index]
    assert judge(describe(6, top=(" SHE,",)))[0] is True  # type: ignore[index]
    assert judge(describe(6, top=(" shed",)))[0] is False  # type: ignore[index]
    assert judge(describe(6, top=("▁nurse",)))[0] is False  # type: ignore[index]


def test_lexicon_judge_is_deterministic():
    descriptions = [GENDERED, PROFESSIONAL, UNKNOWN, MIXED]
    first = judge_features(descriptions, lexicon_judge(), progress=False)
    assert judge_features(descriptions[::-1], lexicon_judge(), progress=False) == first[::-1]


def test_lexicon_judge_checks_its_arguments():
    with pytest.raises(ValueError, match="both lexicons.*she"):
        lexicon_judge(["she"], ["she", "nurse"])
    with pytest.raises(ValueError, match="single words"):
        lexicon_judge(["ice cream"])
    with pytest.raises(TypeError, match="spurious_words"):
        lexicon_judge("she")
    with pytest.raises(ValueError, match="min_share"):
        lexicon_judge(min_share=0)


# ---------------------------------------------------------------------------------- llm_judge


def test_llm_judge_request_and_answers(server):
    server.replies = [(200, "SPURIOUS\nIt fires on female pronouns."), (200, "relevant: nursing")]
    judge = llm_judge(base_url=server.url + "/", model="judge-1", api_key="sk-test", timeout=5)
    out = judge_features([GENDERED, PROFESSIONAL], judge, progress=False)
    assert out == [
        Judgement(GENDERED.node, True, "It fires on female pronouns.", "llm:judge-1"),
        Judgement(PROFESSIONAL.node, False, "nursing", "llm:judge-1"),
    ]
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["Authorization"] == "Bearer sk-test"
    assert first["json"]["model"] == "judge-1" and first["json"]["temperature"] == 0
    prompt = first["json"]["messages"][-1]["content"]
    for context in GENDERED.contexts:
        assert context in prompt
    assert '" herself"' in prompt and "gender" in prompt and "professor vs. nurse" in prompt
    assert "university" in server.requests[1]["json"]["messages"][-1]["content"]


@pytest.mark.parametrize(
    "answer, want",
    [
        ("**Spurious** - pronouns", (True, "pronouns")),
        ("  \nRELEVANT\nReason: dates", (False, "dates")),
    ],
)
def test_llm_answer_parsing(server, answer, want):
    server.replies = [(200, answer)]
    assert llm_judge(base_url=server.url, model="m")(GENDERED) == want


def test_llm_unparsable_answer_names_the_node_and_quotes_it(server):
    server.replies = [(200, "I think it is about gender.")]
    with pytest.raises(RuntimeError, match=f"{HOOK}/f1.*I think it is about gender"):
        llm_judge(base_url=server.url, model="m")(GENDERED)


@pytest.mark.parametrize("body", ["raw:<html>gateway</html>", 'raw:{"choices": []}'])
def test_llm_reply_that_is_not_chat_completions(server, body):
    server.replies = [(200, body)]
    with pytest.raises(RuntimeError, match=f"{HOOK}/f1.*not a chat-completions reply"):
        llm_judge(base_url=server.url, model="m")(GENDERED)


def test_llm_server_error_is_a_runtime_error(server):
    server.replies = [(500, "overloaded")]
    with pytest.raises(RuntimeError, match=f"{HOOK}/f1.*500.*overloaded"):
        llm_judge(base_url=server.url, model="m")(GENDERED)
    assert len(server.requests) == 1  # no retries by default
    assert "Authorization" not in server.requests[0]["headers"]  # no key, no header


def test_llm_retries_failed_requests(server, monkeypatch):
    waits = []
    monkeypatch.setattr(judges.time, "sleep", waits.append)
    server.replies = [(503, "busy"), (200, "SPURIOUS\nshe")]
    assert llm_judge(base_url=server.url, model="m", retries=2)(GENDERED) == (True, "she")
    assert len(server.requests) == 2 and waits == [1]


def test_llm_connection_error_names_the_node(server):
    url = server.url
    server.httpd.shutdown()
    server.httpd.server_close()
    with pytest.raises(RuntimeError, match=f"{HOOK}/f1.*failed"):
        llm_judge(base_url=url, model="m", timeout=2)(GENDERED)


def test_llm_defaults_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # SFC_ variable wins
    monkeypatch.setenv("SFC_JUDGE_BASE_URL", server.url)
    monkeypatch.setenv("SFC_JUDGE_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    server.replies = [(200, "RELEVANT\nno")]
    judge = llm_judge()
    assert judge(UNKNOWN) == (False, "no")
    assert server.requests[0]["json"]["model"] == "env-model"
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-env"
    assert judge.name == "llm:env-model"  # type: ignore[attr-defined]


def test_llm_judge_needs_a_base_url_and_a_model(server, monkeypatch):
    with pytest.raises(ValueError, match="base_url.*SFC_JUDGE_BASE_URL"):
        llm_judge(model="m")
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    with pytest.raises(ValueError, match="model.*SFC_JUDGE_MODEL"):
        llm_judge()
    assert server.requests == []
