"""Pruning a traced circuit: by threshold (``Circuit.prune``) or by a judge of each feature's
dashboard (the seed's GPT-4o step; the judge interface of SHIFT, ``sfc_plugin.judges``).

A judge sees one description per feature (summed over positions) and answers True to prune
it: every position of that feature goes, with its edges. Errors, embeddings and frozen
outputs have no dashboard and stay. Offline judges: ``judges.keyword_judge`` (the task's
words) and ``judges.marked_judge`` (a hand-made list); online: ``judges.llm_judge`` with
:data:`TRACE_PROMPT`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sfc_plugin.circuit import Circuit
from sfc_plugin.judges import Judge, Judgement, describe_features, judge_features
from sfc_plugin.nodes import METRIC_NODE, without_position

if TYPE_CHECKING:
    from sfc_plugin.frontend.dashboards import FeatureIndex

TRACE_PROMPT = """\
A circuit was traced in a language model for this behaviour: {intended}. Below is one \
feature of the circuit (a transcoder or sparse-autoencoder latent): the text contexts where \
it activates most, with the most-activating token marked [[like this]], and the output \
tokens it promotes and suppresses.

Top-activating contexts:
{contexts}

Most-activating tokens: {top_tokens}
Promoted tokens: {promoted}
Suppressed tokens: {suppressed}

Is this feature plausibly part of how the model does the behaviour (RELEVANT), or unrelated \
to it (SPURIOUS)? Answer with the single word RELEVANT or SPURIOUS on the first line and a \
one-line reason on the second line."""
"""A ``prompt`` for ``judges.llm_judge(prompt=TRACE_PROMPT, intended=<the behaviour>)``."""


def prune_with_judge(
    circuit: Circuit,
    judge: Judge,
    index: FeatureIndex | None = None,
    *,
    n_contexts: int = 10,
    progress: bool = True,
) -> tuple[Circuit, list[Judgement]]:
    """The circuit without the features ``judge`` marks (True = prune), and the judgements.

    ``index``: the dictionaries' ``FeatureIndex`` (``feature_index``), whose dashboards the
    judge reads (None: it sees node ids and effects only). A feature's description carries
    its effect summed over positions. The settings record the judge and the pruned ids."""
    features = circuit.nodes[circuit.nodes.kind == "feature"]
    summed = (
        features.assign(node=[without_position(n) for n in features.node])
        .groupby(["node", "hook_name", "feature"], as_index=False, sort=False)
        .effect.sum()
    )
    judgements = judge_features(
        describe_features(summed, index, n_contexts), judge, progress=progress
    )
    pruned = {j.node for j in judgements if j.spurious}
    drop = {n for n in features.node if without_position(n) in pruned}
    nodes = circuit.nodes[~circuit.nodes.node.isin(drop)].reset_index(drop=True)
    keep = set(nodes.node) | {METRIC_NODE}
    edges = circuit.edges[
        circuit.edges.upstream.isin(keep) & circuit.edges.downstream.isin(keep)
    ].reset_index(drop=True)
    name = judgements[0].judge if judgements else str(getattr(judge, "name", "judge"))
    settings = {**circuit.settings, "judge": name, "judge_pruned": sorted(pruned)}
    return Circuit(nodes, edges, settings), judgements
