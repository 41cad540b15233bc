"""The behaviours browser in headless Chromium: the page loads offline, its script sorts and
filters the cluster cards as the URL fragment asks, and the circuit links are in the DOM."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest
from conftest import dump_dom

from sfc_plugin.frontend.behaviours_page import save_behaviours_page

# cluster id -> (size, coherence, answers of its samples)
CLUSTERS = {
    0: (2, 0.5, [" the", " the"]),
    1: (4, 0.25, [")", ")", ")", "]"]),
    2: (1, float("nan"), ["\n"]),
    3: (3, 0.75, [" of", " of", " <b>"]),
}
LINKS = {1: "clusters/cluster_00001.html", 3: "clusters/cluster_00003.html"}


@pytest.fixture
def page(tmp_path) -> Path:
    """A page of four clusters, two of them with circuit pages."""
    rows, labels, top = [], [], []
    for cid, (_, _, answers) in CLUSTERS.items():
        for answer in answers:
            n = len(rows)
            rows.append((n, cid, n, 5, f"context {n} of cluster {cid} <&>", answer, n, 1.5))
            labels.append(cid)
        counts = pd.Series(answers).value_counts()
        top.append([[text, int(count)] for text, count in counts.items()])
    columns = ["sample", "document", "position", "n_context", "context", "answer"]
    samples = pd.DataFrame(rows, columns=[*columns, "answer_token", "loss"])
    clusters = pd.DataFrame(
        dict(
            cluster=list(CLUSTERS),
            size=[size for size, _, _ in CLUSTERS.values()],
            coherence=[coherence for _, coherence, _ in CLUSTERS.values()],
            answer_share=[0.5] * len(CLUSTERS),
            top_answers=top,
            faithfulness=[float("nan"), 0.9, float("nan"), 0.6],
        )
    )
    path = tmp_path / "behaviours.html"
    save_behaviours_page(path, clusters, samples, labels, circuit_pages=LINKS, settings={"k": 4})
    return path


def shown_ids(dom: str) -> list[int]:
    """The ids of the cluster cards not hidden, in DOM order."""
    cards = re.findall(r"<section ([^>]*)>", dom)
    return [
        int(re.search(r'data-cluster="(\d+)"', c)[1])  # type: ignore[index]
        for c in cards
        if "bh-cluster" in c and " hidden" not in c
    ]


def test_the_page_is_offline_and_lists_clusters_and_links(chromium, page):
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text)
    assert not re.search(r"<link|@import|url\(|https?://", text)
    dom = dump_dom(page.as_uri())
    assert 'data-sfc-ready="true"' in dom  # the script ran to the end
    assert shown_ids(dom) == [1, 3, 0, 2]  # by size
    for cid, link in LINKS.items():
        card = dom.split(f'id="cluster-{cid}"')[1].split("</section>")[0]
        assert f'<a class="bh-circuit" href="{link}">' in card
    assert dom.count('class="bh-circuit"') == len(LINKS)
    assert "context 0 of cluster 0 &lt;&amp;&gt;" in dom and "<code> &lt;b&gt;</code>" in dom
    assert '<span class="bh-count">4 clusters</span>' in dom


@pytest.mark.parametrize(
    "fragment, shown",
    [
        ("sort=coherence", [3, 0, 1, 2]),  # NaN last
        ("sort=faithfulness&reverse=1", [3, 1, 0, 2]),  # reversed; missing values stay last
        (f"sort=cluster&filter={quote(' the')}", [0]),
        (f"filter={quote(chr(92) + 'n')}", [2]),  # a typed \n finds the newline answer
        ("sort=nonsense", [1, 3, 0, 2]),  # an unknown key: the default
    ],
)
def test_the_url_fragment_sorts_and_filters(chromium, page, fragment, shown):
    dom = dump_dom(f"{page.as_uri()}#{fragment}")
    assert 'data-sfc-ready="true"' in dom and shown_ids(dom) == shown
    if len(shown) < len(CLUSTERS):
        assert f"showing {len(shown)} of {len(CLUSTERS)} clusters" in dom
