"""The behaviours browser page as HTML text: escaping, order, links, visible tokens, the
optional circuit columns and the errors for bad input (no browser; see
tests/integration/test_behaviours_browser.py for the page in Chromium)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from sfc_plugin.frontend.behaviours_page import (
    CONTEXT_CHARS,
    behaviours_page_html,
    save_behaviours_page,
)

NASTY = "if a < b && c > \"d\" 'e' </script><b>bold</b>"


def make_frames() -> tuple[pd.DataFrame, pd.DataFrame, list[int]]:
    """Six samples in three clusters (sizes 1, 3, 2) and one unassigned sample."""
    contexts = [NASTY, "x" * 150 + "TAIL" * 50, "one\ntwo", "(a", "(b", "lonely", "unused"]
    answers = [" the", "\n", " ", ")", ")", "&amp;", " z"]
    samples = pd.DataFrame(
        dict(
            sample=range(7),
            document=[0, 0, 1, 1, 2, 2, 3],
            position=[4, 8, 2, 3, 5, 6, 1],
            n_context=[4, 8, 2, 3, 5, 6, 1],
            context=contexts,
            answer=answers,
            answer_token=[10, 11, 12, 13, 13, 14, 15],
            loss=[1.25, 2.5, 0.75, 0.5, np.nan, 3.0, 1.0],
        )
    )
    labels = [7, 3, 3, 5, 5, 3, -1]
    clusters = pd.DataFrame(
        dict(
            cluster=[7, 3, 5],
            size=[1, 3, 2],
            coherence=[np.nan, 0.625, 0.875],
            answer_share=[1.0, 1 / 3, 1.0],
            top_answers=[[[" the", 1]], [["\n", 1], [" ", 1], ["&amp;", 1]], [[")", 2]]],
        )
    )
    return clusters, samples, labels


def cards(page: str) -> list[str]:
    """The HTML of each cluster card, in page order."""
    return re.findall(r'<section class="bh-cluster".*?</section>', page, flags=re.S)


def card_ids(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'<section class="bh-cluster" id="cluster-(\d+)"', page)]


def test_cards_are_ordered_by_size_and_show_the_counts_and_settings():
    clusters, samples, labels = make_frames()
    page = behaviours_page_html(
        clusters, samples, labels, title="Tiny <run>", settings={"model": "m", "k": 3}
    )
    assert page.startswith("<!DOCTYPE html>") and "<title>Tiny &lt;run&gt;</title>" in page
    assert card_ids(page) == [3, 5, 7]
    assert "7 samples, 3 clusters (6 samples in a cluster, 1 unassigned)" in page
    assert "<tr><th>model</th><td>m</td></tr>" in page and "<tr><th>k</th><td>3</td></tr>" in page
    three, five, seven = cards(page)
    assert "<b>3</b> samples" in three and "coherence <b>0.625</b>" in three
    assert "answer share <b>33%</b>" in three
    assert "<b>1</b> sample<" in seven and "coherence <b>–</b>" in seven  # NaN coherence
    assert "unused" not in page  # the unassigned sample is in no card
    ties = clusters.assign(size=[2, 2, 2])
    assert card_ids(behaviours_page_html(ties, samples, labels)) == [3, 5, 7]  # ties: by id


def test_every_text_from_the_data_is_escaped():
    clusters, samples, labels = make_frames()
    top = pd.Series([[[NASTY, 1]], [], [[")", 2]]], index=clusters.index, dtype=object)
    clusters = clusters.assign(top_answers=top)
    page = behaviours_page_html(
        clusters,
        samples,
        labels,
        title=NASTY,
        settings={NASTY: NASTY},
        notes=[NASTY],
        circuit_pages={7: 'c.html" onclick="alert(1)'},
    )
    escaped = "if a &lt; b &amp;&amp; c &gt; &#34;d&#34; &#39;e&#39; &lt;/script&gt;&lt;b&gt;"
    assert NASTY not in page and "<b>bold</b>" not in page
    assert page.count("</script>") == 1  # only the page's own script
    assert f"<title>{escaped}" in page and f"<h1>{escaped}" in page
    assert f'<p class="bh-note">{escaped}' in page and f"<th>{escaped}" in page
    assert 'href="c.html&#34; onclick=&#34;alert(1)"' in page and 'onclick="' not in page
    seven = cards(page)[2]
    assert f'<span class="bh-context">{escaped}' in seven  # the context
    assert f"<code>{escaped}" in seven and f'data-answers="{escaped}' in seven  # the answers
    assert "&amp;amp;" in cards(page)[0]  # the answer "&amp;" is text, not an entity


def test_answers_show_whitespace_and_follow_the_context():
    clusters, samples, labels = make_frames()
    three = cards(behaviours_page_html(clusters, samples, labels))[0]
    tokens = re.findall(r'<span class="bh-token"><code>(.*?)</code> (\d+)</span>', three)
    assert tokens == [("\u21b5", "1"), ("\u2423", "1"), ("&amp;amp;", "1")]
    examples = re.findall(
        r'<span class="bh-context">(.*?)</span><mark class="bh-answer">(.*?)</mark>', three, re.S
    )
    long_context, answer = examples[0]
    assert answer == "\u21b5"
    assert long_context.startswith('<span class="bh-cut">…</span>')
    shown = long_context.removeprefix('<span class="bh-cut">…</span>')
    assert shown == ("x" * 150 + "TAIL" * 50)[-CONTEXT_CHARS:]
    assert examples[1] == ("one\u21b5\ntwo", "\u2423")  # newlines marked, the line kept
    assert (
        '<mark class="bh-answer"> the</mark> <span class="bh-loss">1.25 nats</span>'
        in (cards(behaviours_page_html(clusters, samples, labels))[2])
    )
    assert 'data-answers="\u21b5\n\u2423\n&amp;amp;"' in three


def test_examples_are_capped_and_single_sample_clusters_render():
    clusters, samples, labels = make_frames()
    page = behaviours_page_html(clusters, samples, labels, n_examples=2)
    three, five, seven = cards(page)
    assert three.count("<li ") == 2 and five.count("<li ") == 2 and seven.count("<li ") == 1
    assert 'title="sample 0, document 0, position 4' in seven
    assert "nats" not in five.split("<li ")[2]  # NaN loss: not shown
    alone = clusters.iloc[[0]]
    page = behaviours_page_html(alone, samples.iloc[[0]], [7])
    assert card_ids(page) == [7] and "1 samples, 1 clusters" in page
    empty = behaviours_page_html(clusters.iloc[:0], samples.iloc[:0], [])
    assert "No clusters." in empty


def test_circuit_links_and_metrics_when_present():
    clusters, samples, labels = make_frames()
    page = behaviours_page_html(clusters, samples, labels)
    assert "bh-circuit" not in page.split("</style>")[1] and "faithfulness <b>" not in page
    found = clusters.assign(
        n_nodes=[np.nan, 12, 40], faithfulness=[np.nan, 0.8125, 0.5], circuit_seconds=[0, 3.25, 9]
    )
    page = behaviours_page_html(
        found, samples, labels, circuit_pages={3: "clusters/cluster_00003.html"}
    )
    three, five, seven = cards(page)
    assert '<a class="bh-circuit" href="clusters/cluster_00003.html">' in three
    assert "bh-circuit" not in five and "bh-circuit" not in seven
    assert "nodes <b>12</b>" in three and "faithfulness <b>0.812</b>" in three
    assert "circuit time <b>3.2 s</b>" in three
    assert "nodes <b>–</b>" in seven and "faithfulness <b>–</b>" in seven
    assert 'data-faithfulness="0.8125"' in three and 'data-faithfulness=""' in seven
    for key in ("nodes", "faithfulness", "seconds"):
        assert f'<option value="{key}">' in page


def test_bad_input_names_the_problem():
    clusters, samples, labels = make_frames()
    with pytest.raises(ValueError, match="labels has 6 entries but samples has 7 rows"):
        behaviours_page_html(clusters, samples, labels[:-1])
    with pytest.raises(ValueError, match="cluster 9 is in labels but not in clusters"):
        behaviours_page_html(clusters, samples, [9, 3, 3, 5, 5, 3, -1])
    with pytest.raises(ValueError, match="samples lacks column.*'loss'"):
        behaviours_page_html(clusters, samples.drop(columns="loss"), labels)
    with pytest.raises(ValueError, match="clusters lacks column.*'top_answers'"):
        behaviours_page_html(clusters.drop(columns="top_answers"), samples, labels)
    with pytest.raises(ValueError, match="cluster 3 has more than one row"):
        behaviours_page_html(pd.concat([clusters, clusters.iloc[[1]]]), samples, labels)
    with pytest.raises(ValueError, match="labels must be a sequence of ints"):
        floats = [float(x) for x in labels]
        behaviours_page_html(clusters, samples, floats)  # pyright: ignore[reportArgumentType]


def test_save_writes_the_page_atomically(tmp_path):
    clusters, samples, labels = make_frames()
    path = tmp_path / "new" / "behaviours.html"
    array = np.asarray(labels)  # what a pipeline may pass
    save_behaviours_page(path, clusters, samples, array, title="Saved")  # pyright: ignore
    page = path.read_text(encoding="utf-8")
    assert page == behaviours_page_html(clusters, samples, labels, title="Saved")
    assert [p.name for p in path.parent.iterdir()] == ["behaviours.html"]
