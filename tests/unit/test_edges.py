"""Ground-truth tests for ``sfc_plugin.edges.edge_effects``.

Every expected value is computed here, independently of sfc_plugin: plain TransformerLens hooks
(``model.hooks``), the SAE's own ``encode``/``decode`` and ``torch.autograd``.

The definition tested (METHOD.md section 3): for an upstream node ``u`` (feature ``i`` at
position ``p`` of site ``U``, or the error vector there) and a downstream node ``d`` (feature
``j`` at position ``q`` of site ``D``, or D's error vector there), per example

    IE(u -> d) = grad_d m . (dd/du) . (u_ablated - u_clean)

* ``dd/du`` is the Jacobian at the clean input with every *other* site's output held at its
  clean value ``decode(f_c) + eps_c``; ``u`` enters its site as ``decode(f') + eps'`` (clean
  values except ``u``); ``d`` is a function of D's input ``x_D``: ``f_D = encode(x_D)``,
  ``eps_D = x_D - decode(encode(x_D))``. Computed with ``torch.autograd.functional.jacobian``
  of a function mapping u's value (one example) to D's node values.
* ``grad_d m`` is dm/d(node d) with only D's output replaced by ``decode(f) + eps`` (AtP: at the
  clean point; IG: averaged over D's interpolation path, all D's nodes together).
* templatic aggregation: mean over examples per (u position, d position); sum: summed over both
  positions of each example, then mean over examples.
"""

from __future__ import annotations

import ground_truth
import pytest
import torch
from conftest import make_saes, make_tiny_model
from ground_truth import (
    AGREEMENT_PAIRS,
    assert_nonvacuous,
    check_edges,
    contract,
    down_edge,
    frame_dict,
    jac,
    jacobian_truth,
    make_fn,
    nid,
    node_delta,
    node_out,
    node_value,
    vjp_truth,
)

from sfc_plugin.attribution import edge_effects, node_effects

D_SAE = 16

# Forward order. resid_post sites block every path through the residual stream, so the edges
# with a non-zero direct path are: resid0 -> attn1/mlp1/resid1, attn1 -> mlp1 (sequential only),
# attn1/mlp1 -> resid1, resid1 -> mlp2 (through the un-dictionaried attention of block 2).
SITES = [
    "blocks.0.hook_resid_post",
    "blocks.1.hook_attn_out",
    "blocks.1.hook_mlp_out",
    "blocks.1.hook_resid_post",
    "blocks.2.hook_mlp_out",
]
R0, A1, M1, R1, M2 = SITES

# Contrastive pairs, all 5 tokens long (checked in `pair_examples`).
PAIR_ROWS = AGREEMENT_PAIRS

# Single inputs of different token lengths (for "sum" aggregation).
SINGLE_ROWS = [
    {"prefix": "The cat", "answer": " is"},
    {"prefix": "The teacher near the house", "answer": " is"},
    {"prefix": "The doctor that", "answer": " likes"},
]

POSITIONS = (1, 4)  # the position where the pairs differ, and the last one


pytestmark = pytest.mark.usefixtures("one_thread")


_MODELS: dict = {}


@pytest.fixture(scope="module")
def setup(tokenizer):
    """(model, saes) per family, built once per module."""

    def get(fam: str):
        if fam not in _MODELS:
            model = make_tiny_model(fam, tokenizer, seed=3)
            for p in model.parameters():
                p.requires_grad_(False)
            saes = make_saes(model, SITES, d_sae=D_SAE, seed=11)
            for sae in saes.values():
                for p in sae.parameters():
                    p.requires_grad_(False)
            _MODELS[fam] = (model, saes)
        return _MODELS[fam]

    yield get
    _MODELS.clear()


def pair_examples(model, saes, rows=PAIR_ROWS):
    examples = ground_truth.pair_examples(model, saes, rows)
    assert examples[0].tokens.shape[1] == 5
    return examples


def single_examples(model, saes, rows=SINGLE_ROWS):
    return ground_truth.single_examples(model, saes, rows)


def by_site(nodes, sites=SITES):
    return ground_truth.by_site(nodes, sites)


def pick_nodes(examples, positions=POSITIONS, per_pos=2, sites=SITES):
    return ground_truth.pick_nodes(examples, positions, sites, per_pos)


def _edges(model, saes, nodes, **kw):
    kw = {"ablation": "patch", "batch_size": 2, "progress": False, **kw}
    data = kw.pop("data", PAIR_ROWS)
    return edge_effects(model, saes, data, [nid(n) for n in nodes], **kw)


# Sites whose kept nodes take part in the main edge checks. With nodes at blocks.2.hook_mlp_out
# too, that site's upstream sites resid0/attn1/mlp1 are blocked by resid1 (no direct path).
THROUGH_R1 = [R0, A1, M1, R1]


def _subset(nodes, sites):
    return [n for n in nodes if n[0] in sites]


# ----------------------------------------------------------------------------------------------
# 1. AtP edges against frozen-site Jacobians
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("node_sites", ["through_resid1", "all"])
@pytest.mark.parametrize("fam", ["sequential", "parallel"])
def test_atp_edges_match_frozen_jacobian(setup, fam, node_sites):
    """Every edge among 6 nodes (2 features + error at positions 1 and 4) per site:
    feature->feature, feature->error, error->feature and error->error, templatic mean over the 5
    pairs (batch_size=2: three batches, the last partial). ``all`` adds nodes at
    blocks.2.hook_mlp_out, whose upstream sites resid0/attn1/mlp1 have no direct path to it
    (resid1 blocks them): those edges must come out zero (absent)."""
    model, saes = setup(fam)
    examples = pair_examples(model, saes)
    nodes = pick_nodes(examples)
    if node_sites != "all":
        nodes = _subset(nodes, THROUGH_R1)
    grads = [ex.down_grads("atp") for ex in examples]
    truth = jacobian_truth(examples, grads, nodes)
    assert_nonvacuous(truth)
    if node_sites == "all":
        blocked = [v for (u, d), v in truth.items() if d.startswith(M2) and not u.startswith(R1)]
        assert blocked and max(map(abs, blocked)) == 0
    # the topology is the model's: attn_out(1) -> mlp_out(1) only when the MLP reads the
    # attention output (sequential); zero in the parallel model
    am = [abs(v) for (u, d), v in truth.items() if u.startswith(A1) and d.startswith(M1)]
    assert max(am) == 0 if fam == "parallel" else max(am) > 1e-3
    df = _edges(model, saes, nodes, method="atp")
    assert list(df.columns) == ["upstream", "downstream", "effect"]
    check_edges(df, truth)


# ----------------------------------------------------------------------------------------------
# 2. Residual -> residual edges with intermediate sites (eq. 6)
# ----------------------------------------------------------------------------------------------


def feats_out(ex, h):
    """Features of site h at every position [P, S] -> site output decode(f) + eps_clean."""
    return lambda v: ex.saes[h].decode(v[None]) + ex.clean[h][1]


@pytest.mark.parametrize("fam", ["parallel", "sequential"])
def test_resid_to_resid_edges(setup, fam):
    """blocks.0.hook_resid_post -> blocks.1.hook_resid_post with attn_out(1) and mlp_out(1) as
    sites (no nodes kept there). (a) The edges equal the frozen-Jacobian ground truth.
    (b) Parallel model: they also equal eq. 6 built from unfrozen pieces (other sites output
    decode(encode(x)) + eps_clean):
        grad_d m . [dd/du - sum_{m' in attn1, mlp1} (dd/df_m') (df_m'/du)] . delta_u.
    Sequential model: eq. 6 as printed subtracts the path u -> attn1 -> mlp1 -> d twice (once
    in each term), so it differs from the frozen edge by exactly that path:
        frozen = eq. 6 + grad_d m . (dd/df_mlp1)(df_mlp1/df_attn1)(df_attn1/du) . delta_u."""
    model, saes = setup(fam)
    examples = pair_examples(model, saes)
    nodes = _subset(pick_nodes(examples, positions=(1, 2, 4)), [R0, R1])
    grads = [ex.down_grads("atp") for ex in examples]
    truth = jacobian_truth(examples, grads, nodes)
    assert_nonvacuous(truth)
    ups, downs = by_site(nodes)[R0], by_site(nodes)[R1]

    eq6: dict = {}
    double: dict = {}
    live_cross = 0.0  # size of the unfrozen Jacobian between different positions
    for ex, g in zip(examples, grads):
        # dd/df_m' (all of m''s features at all positions), unfrozen
        J_dm = {
            h: jac(make_fn(ex, h, feats_out(ex, h), R1, "live"), ex.clean[h][0][0])
            for h in (A1, M1)
        }
        J_ma = jac(make_fn(ex, A1, feats_out(ex, A1), M1, "live"), ex.clean[A1][0][0])[0]
        for u in ups:
            u0, delta = node_value(ex, u), node_delta(ex, u)
            J_live = jac(make_fn(ex, R0, node_out(ex, u), R1, "live"), u0)
            J6 = list(J_live)
            J_mu = {}
            for h in (A1, M1):
                J_mu[h] = jac(make_fn(ex, R0, node_out(ex, u), h, "live"), u0)[0]
                for k in range(2):
                    J6[k] = J6[k] - torch.tensordot(J_dm[h][k], J_mu[h], dims=2)
            path = [  # u -> attn1 -> mlp1 -> d
                torch.tensordot(J_dm[M1][k], torch.tensordot(J_ma, J_mu[A1], dims=2), dims=2)
                for k in range(2)
            ]
            v6 = tuple(contract(J, delta) for J in J6)
            vp = tuple(contract(J, delta) for J in path)
            vl = tuple(contract(J, delta) for J in J_live)
            for d in downs:
                key = (nid(u), nid(d))
                eq6[key] = eq6.get(key, 0.0) + down_edge(d, v6, g[R1]) / len(examples)
                double[key] = double.get(key, 0.0) + down_edge(d, vp, g[R1]) / len(examples)
                if u[1] != d[1]:
                    live_cross = max(live_cross, abs(down_edge(d, vl, g[R1])))

    df = _edges(model, saes, nodes, method="atp")
    got = check_edges(df, truth)  # (a)
    # frozen: only the identity path, so u at p reaches d at q only for p == q
    assert all(v == 0 for (u, d), v in truth.items() if u.split("@")[1] != d.split("@")[1])
    assert live_cross > 1e-3, "unfrozen cross-position Jacobian is zero: (b) would be vacuous"
    # the attn1 -> mlp1 path exists only in the sequential model
    biggest = max(abs(v) for v in double.values())
    assert biggest > 1e-4 if fam == "sequential" else biggest == 0
    for key, want in truth.items():
        g_ = got.get(key, 0.0)
        if fam == "parallel":  # (b)
            assert abs(g_ - eq6[key]) <= 2e-5 + 1e-4 * abs(eq6[key]), (key, g_, eq6[key])
        else:
            assert abs(want - (eq6[key] + double[key])) <= 2e-5 + 1e-4 * abs(want), key
    if fam == "sequential":
        diff = max(abs(truth[k] - eq6[k]) for k in truth)
        assert diff > 1e-4, "frozen edge and eq. 6 should differ in the sequential model"


# ----------------------------------------------------------------------------------------------
# 3. IG
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fam", ["sequential", "parallel"])
def test_ig_edges(setup, fam):
    """method="ig", steps=3: grad_d m is the mean over k = 0, 1, 2 of dm/dd with D's nodes at
    (1 - k/3) clean + (k/3) patch (brute-force loop), the Jacobian at the clean input."""
    model, saes = setup(fam)
    examples = pair_examples(model, saes)
    nodes = _subset(pick_nodes(examples), THROUGH_R1)
    grads = [ex.down_grads("ig", steps=3) for ex in examples]
    truth = jacobian_truth(examples, grads, nodes)
    assert_nonvacuous(truth)
    df = _edges(model, saes, nodes, method="ig", steps=3)
    check_edges(df, truth)
    # IG is not AtP here: the clean-gradient edges differ
    atp = jacobian_truth(examples, [ex.down_grads("atp") for ex in examples], nodes)
    assert max(abs(atp[k] - truth[k]) for k in truth) > 1e-3


# ----------------------------------------------------------------------------------------------
# 4. One downstream node per backward vs many
# ----------------------------------------------------------------------------------------------


def test_batched_backward_matches_per_node(setup):
    """Llama family, batch_size=5: max_batch_rows=5 (one downstream node per backward),
    max_batch_rows=15 (3 per backward) and the default (10 per backward) agree with each other
    and with the own per-node autograd loop, and with the Jacobian ground truth."""
    model, saes = setup("llama")
    examples = pair_examples(model, saes)
    nodes = _subset(pick_nodes(examples, positions=(1, 3, 4)), THROUGH_R1)
    grads = [ex.down_grads("atp") for ex in examples]
    truth = vjp_truth(examples, grads, nodes)
    assert_nonvacuous(truth)
    runs = [
        _edges(model, saes, nodes, method="atp", batch_size=5, max_batch_rows=rows)
        for rows in (5, 15, None)
    ]
    for df in runs:
        check_edges(df, truth)
    one, three, default = (frame_dict(df) for df in runs)
    assert set(one) == set(default) == set(three)
    for k in one:
        assert abs(one[k] - default[k]) <= 1e-6 + 1e-5 * abs(one[k])
        assert abs(three[k] - default[k]) <= 1e-6 + 1e-5 * abs(one[k])
    # the per-node loop is itself checked against the Jacobians on a few edges
    jt = jacobian_truth(examples[:1], grads[:1], _subset(nodes, [R0, A1]))
    vt = vjp_truth(examples[:1], grads[:1], _subset(nodes, [R0, A1]))
    for k, v in jt.items():
        assert abs(v - vt[k]) <= 2e-5 + 1e-4 * abs(v), k


# ----------------------------------------------------------------------------------------------
# 5. Edges into the metric
# ----------------------------------------------------------------------------------------------


def test_metric_edges(setup):
    """Sites resid0, attn1, mlp1, mlp2 (no resid site after resid0, so every site has a direct
    path to the logits). method="ig", steps=3. Non-last sites: dm/du with every later (and
    every other) site frozen at its clean output, at the clean point, times delta_u. Last site
    (mlp2) with ``effects=``: the node effects. Without ``effects=``: the clean-point direct
    effect (for the last site that is the AtP effect)."""
    model, all_saes = setup("sequential")
    sites = [R0, A1, M1, M2]
    saes = {h: all_saes[h] for h in sites}
    examples = pair_examples(model, saes)
    nodes = pick_nodes(examples, sites=sites)
    kw = dict(method="ig", steps=3, ablation="patch", batch_size=2, progress=False)
    effects = node_effects(model, saes, PAIR_ROWS, **kw)
    with_eff = frame_dict(_edges(model, saes, nodes, effects=effects, **kw))
    without = frame_dict(_edges(model, saes, nodes, **kw))

    direct: dict = {}
    for ex in examples:
        for u in nodes:
            g = jac(make_fn(ex, u[0], node_out(ex, u), None), node_value(ex, u))
            direct[nid(u)] = direct.get(nid(u), 0.0) + float(contract(g, node_delta(ex, u)))
    direct = {k: v / len(examples) for k, v in direct.items()}
    for h in (R0, A1, M1):
        vals = [abs(direct[nid(u)]) for u in nodes if u[0] == h]
        assert max(vals) > 1e-3, f"{h}: vacuous direct effects"
    for u in nodes:
        h, p, i = u
        for got in (with_eff, without):
            want = direct[nid(u)]
            if h == M2 and got is with_eff:
                want = float(effects.errors[h][p] if i is None else effects.features[h][p, i])
            g = got.get((nid(u), "metric"), 0.0)
            assert abs(g - want) <= 2e-5 + 1e-4 * abs(want), (nid(u), g, want)
    # the IG node effects at mlp2 are not the clean-point direct effects
    last = [nid(u) for u in nodes if u[0] == M2]
    assert max(abs(with_eff.get((k, "metric"), 0.0) - direct[k]) for k in last) > 1e-3
    # the edges between sites in the same call are the frozen-Jacobian ones
    ig_grads = [ex.down_grads("ig", steps=3) for ex in examples]
    truth = jacobian_truth(examples, ig_grads, nodes)
    check_edges(_edges(model, saes, nodes, **kw), truth)


# ----------------------------------------------------------------------------------------------
# 6. Sum aggregation on single inputs of different lengths
# ----------------------------------------------------------------------------------------------


def test_sum_aggregation_zero_ablation(setup):
    """aggregation="sum", ablation="zero", single inputs of 2, 5 and 3 tokens (batch_size=2:
    right padding inside a batch). A node is a feature (or the error) at every position; an
    edge sums grad_d m[q] . dd[q]/du[p] . delta_u[p] over both positions of each (unpadded) row,
    then averages over rows."""
    model, saes = setup("parallel")
    examples = single_examples(model, saes)
    nodes = []
    for h, n_feat in ((R0, 2), (A1, 2), (R1, 1)):
        active = sum((ex.clean[h][0][0] > 0).float().mean(0) for ex in examples)
        nodes += [(h, None, i) for i in active.topk(n_feat).indices.tolist()] + [(h, None, None)]
    grads = [ex.down_grads("atp") for ex in examples]
    truth = jacobian_truth(examples, grads, nodes)
    assert_nonvacuous(truth)
    df = _edges(
        model, saes, nodes, data=SINGLE_ROWS, method="atp", ablation="zero", aggregation="sum"
    )
    assert all("@" not in x for x in df.upstream) and all("@" not in x for x in df.downstream)
    check_edges(df, truth)


# ----------------------------------------------------------------------------------------------
# 7. Sum over all nodes of the only upstream site = whole-site Jacobian
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fam", ["sequential", "parallel"])
def test_sum_over_upstream_site(setup, fam):
    """D = attn_out(1) is fed only by U = resid_post(0). For d in {features at 4 and 2, errors},
    the sum over ALL nodes of U (every feature and error at every position) of IE(u -> d) is
    grad_d m . (dd/dx_U) . (x_U_patch - x_U_clean), x_U the whole site output [P, d_model]."""
    model, saes = setup(fam)
    examples = pair_examples(model, saes)
    n_pos = examples[0].tokens.shape[1]
    ups = [(R0, p, i) for p in range(n_pos) for i in range(D_SAE)]
    ups += [(R0, p, None) for p in range(n_pos)]
    downs = [n for n in pick_nodes(examples, positions=(2, 4), sites=[A1])]
    df = _edges(model, saes, ups + downs, method="atp")
    got = frame_dict(df)
    grads = [ex.down_grads("atp") for ex in examples]
    want = {nid(d): 0.0 for d in downs}
    for ex, g in zip(examples, grads):
        x_c = ex.clean_out(R0)[0]
        f_a, e_a = ex.ablated[R0]
        dx = (ex.saes[R0].decode(f_a) + e_a)[0] - x_c
        J = jac(make_fn(ex, R0, lambda x: x[None], A1), x_c)
        v = tuple(contract(Jx, dx) for Jx in J)
        for d in downs:
            want[nid(d)] += down_edge(d, v, g[A1]) / len(examples)
    assert max(map(abs, want.values())) > 1e-2
    for d, w in want.items():
        total = sum(got.get((nid(u), d), 0.0) for u in ups)
        assert abs(total - w) <= 5e-5 + 1e-4 * abs(w), (d, total, w)
