"""Scores of a classifier on balanced data and the concept-bottleneck baseline (METHOD.md
section 7, steps 5 and 6; the reference's ``bib_shift`` notebook).

Every row of the SHIFT table has three numbers on the balanced test set: *profession*
accuracy (predictions against the intended label), *gender* accuracy (the same predictions
against the unintended label: 50% when the classifier ignores gender, as the reference's
``test_probe`` computes it), and *worst-group* accuracy (the lowest profession accuracy over
the four groups).

Concept bottleneck probing (CBP): 20 keywords, each a concept vector (the probe layer's
output at the keyword's last token, minus the mean of the 20, normalised); an input is the
vector of cosine similarities between its pooled activation and the concepts, and the probe
is trained on those 20 numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

CBP_CONCEPTS: tuple[str, ...] = (
    " nurse",
    " healthcare",
    " hospital",
    " patient",
    " medical",
    " clinic",
    " triage",
    " medication",
    " emergency",
    " surgery",
    " professor",
    " academia",
    " research",
    " university",
    " tenure",
    " faculty",
    " dissertation",
    " sabbatical",
    " publication",
    " grant",
)
"""The reference's 20 keywords: 10 about nursing, 10 about academia."""


def scores(predictions: Tensor, data: pd.DataFrame) -> dict[str, float]:
    """Profession, gender and worst-group accuracy (fractions) of 0/1 ``predictions`` on
    ``data`` (columns ``profession``, ``gender``, ``group``; one row per prediction)."""
    pred = predictions.detach().cpu().long()
    if len(pred) != len(data):
        raise ValueError(f"{len(pred)} predictions for {len(data)} rows")
    profession = torch.tensor(data.profession.to_numpy()) == pred
    gender = torch.tensor(data.gender.to_numpy()) == pred
    groups = data.group.to_numpy()
    worst = min(float(profession[torch.tensor(groups == g)].float().mean()) for g in set(groups))
    return {
        "profession": float(profession.float().mean()),
        "gender": float(gender.float().mean()),
        "worst_group": worst,
    }


@torch.no_grad()
def concept_vectors(
    model: HookedTransformer, hook: str, concepts: Sequence[str] = CBP_CONCEPTS
) -> Float[Tensor, "concepts d"]:
    """Unit concept vectors: the activation at ``hook`` on each keyword's last token, minus
    their mean over the keywords."""
    if len(concepts) < 2:
        raise ValueError("concept bottleneck probing needs at least two concepts")
    rows = []
    for word in concepts:
        _, cache = model.run_with_cache(model.to_tokens(word), names_filter=[hook])
        rows.append(cache[hook][0, -1].reshape(-1).float())
    vectors = torch.stack(rows)
    vectors = vectors - vectors.mean(0, keepdim=True)
    return vectors / vectors.norm(dim=-1, keepdim=True)


def concept_similarities(
    activations: Float[Tensor, "n d"], concepts: Float[Tensor, "concepts d"]
) -> Float[Tensor, "n concepts"]:
    """Cosine similarity of each pooled activation to each concept vector (CBP's input)."""
    x = activations.float().to(concepts.device)
    return (x / x.norm(dim=-1, keepdim=True)) @ concepts.T
