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

import pytest
import torch
from conftest import make_saes, make_tiny_model
from torch.autograd.functional import jacobian

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

# Contrastive pairs, all 5 tokens long (checked in `_pair_tokens`).
PAIRS = [
    ("The cat near the dog", "The cats near the dog", " is", " are"),
    ("The authors that the guard", "The author that the guard", " like", " likes"),
    ("The boy near the cars", "The boys near the cars", " has", " have"),
    ("The teachers near the house", "The teacher near the house", " are", " is"),
    ("The doctor that the farmers", "The doctors that the farmers", " likes", " like"),
]
PAIR_ROWS = [
    {"clean_prefix": c, "patch_prefix": p, "clean_answer": ca, "patch_answer": pa}
    for c, p, ca, pa in PAIRS
]

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


# ----------------------------------------------------------------------------------------------
# Ground-truth machinery (plain TL hooks, SAE encode/decode, autograd)
# ----------------------------------------------------------------------------------------------


def _answer_id(model, text):
    ids = model.to_tokens(text, prepend_bos=False)[0]
    assert len(ids) == 1, f"answer {text!r} is not one token"
    return int(ids[0])


def _pair_tokens(model, rows=PAIR_ROWS):
    """clean [B,P], patch [B,P], clean answers [B], patch answers [B]; all prefixes equal length."""
    clean = [model.to_tokens(r["clean_prefix"])[0] for r in rows]
    patch = [model.to_tokens(r["patch_prefix"])[0] for r in rows]
    assert len({len(t) for t in clean + patch}) == 1, "pairs must all have one token length"
    assert len(clean[0]) == 5
    ca = torch.tensor([_answer_id(model, r["clean_answer"]) for r in rows])
    pa = torch.tensor([_answer_id(model, r["patch_answer"]) for r in rows])
    assert (ca != pa).all()
    return torch.stack(clean), torch.stack(patch), ca, pa


def _logit_diff(ca, pa):
    """Default pair metric: logit(patch answer) - logit(clean answer) at the last position."""

    def metric(logits):
        last = logits[:, -1]
        return last.gather(1, pa[:, None])[:, 0] - last.gather(1, ca[:, None])[:, 0]

    return metric


def _answer_logprob(ans):
    """Default single-input metric (unpadded row): log p(answer) at the last position."""

    def metric(logits):
        return logits[:, -1].log_softmax(-1).gather(1, ans[:, None])[:, 0]

    return metric


@torch.no_grad()
def site_values(model, saes, tokens):
    """hook -> (f, eps) of the unmodified model on `tokens` (every hook of `saes`)."""
    _, cache = model.run_with_cache(tokens, names_filter=list(saes))
    out = {}
    for h in saes:
        f = saes[h].encode(cache[h])
        out[h] = (f, cache[h] - saes[h].decode(f))
    return out


class Example:
    """One example: tokens [1, P], its metric, clean and ablated node values [1, P, .] at the
    sites `saes` (a dict in forward order)."""

    def __init__(self, model, saes, tokens, metric, ablated=None):
        self.model, self.saes, self.tokens, self.metric = model, saes, tokens, metric
        self.sites = list(saes)
        self.clean = site_values(model, saes, tokens)
        if ablated is None:  # zero ablation
            ablated = {
                h: (torch.zeros_like(f), torch.zeros_like(e)) for h, (f, e) in self.clean.items()
            }
        self.ablated = ablated

    def clean_out(self, h):
        f, e = self.clean[h]
        return self.saes[h].decode(f) + e

    def site_grads(self, h, alpha=0.0):
        """dm/df [P, S], dm/deps [P, d] at site h, only h's output replaced by decode(f) + eps
        with f, eps at (1 - alpha) clean + alpha ablated (other sites unmodified)."""
        (fc, ec), (fa, ea) = self.clean[h], self.ablated[h]
        f = ((1 - alpha) * fc + alpha * fa).requires_grad_(True)
        e = ((1 - alpha) * ec + alpha * ea).requires_grad_(True)
        hook = (h, lambda act, hook: self.saes[h].decode(f) + e)
        with torch.enable_grad(), self.model.hooks(fwd_hooks=[hook]):
            m = self.metric(self.model(self.tokens)).sum()
        gf, ge = torch.autograd.grad(m, [f, e])
        return gf[0], ge[0]

    def down_grads(self, method, steps=None):
        """hook -> grad_d m of all nodes of the site: clean point (AtP), or the mean over
        k = 0..N-1 of the gradient at (1 - k/N) clean + (k/N) ablated (IG)."""
        out = {}
        for h in self.sites:
            if method == "atp":
                out[h] = self.site_grads(h)
            else:
                gs = [self.site_grads(h, k / steps) for k in range(steps)]
                out[h] = (sum(g[0] for g in gs) / steps, sum(g[1] for g in gs) / steps)
        return out


def pair_examples(model, saes, rows=PAIR_ROWS):
    clean, patch, ca, pa = _pair_tokens(model, rows)
    out = []
    for b in range(len(rows)):
        ablated = site_values(model, saes, patch[b : b + 1])
        metric = _logit_diff(ca[b : b + 1], pa[b : b + 1])
        out.append(Example(model, saes, clean[b : b + 1], metric, ablated))
    return out


def single_examples(model, saes, rows=SINGLE_ROWS):
    """Single inputs, each run unpadded on its own; zero ablation."""
    toks = [model.to_tokens(r["prefix"]) for r in rows]
    assert len({t.shape[1] for t in toks}) == len(rows), "rows should differ in length"
    answers = [torch.tensor([_answer_id(model, r["answer"])]) for r in rows]
    return [Example(model, saes, t, _answer_logprob(a)) for t, a in zip(toks, answers)]


# Nodes are (hook, pos, feature) with feature None for the error and pos None under "sum".


def nid(node) -> str:
    h, pos, feat = node
    return f"{h}/{'err' if feat is None else f'f{feat}'}" + ("" if pos is None else f"@{pos}")


def _index(pos, feat):
    return (0, slice(None) if pos is None else pos) + (() if feat is None else (feat,))


def node_value(ex, node, which="clean"):
    h, pos, feat = node
    f, e = (ex.clean if which == "clean" else ex.ablated)[h]
    return (e if feat is None else f)[_index(pos, feat)].clone()


def node_delta(ex, node):
    return node_value(ex, node, "ablated") - node_value(ex, node)


def node_out(ex, node):
    """value of the node -> its site's output decode(f') + eps' (all else clean)."""
    h, pos, feat = node
    f_c, e_c = ex.clean[h]
    sae = ex.saes[h]

    def out(v):
        if feat is None:
            e = e_c.clone()
            e[_index(pos, None)] = v
            return sae.decode(f_c) + e
        f = f_c.clone()
        f[_index(pos, feat)] = v
        return sae.decode(f) + e_c

    return out


class _Stop(Exception):
    pass


def make_fn(ex, up_site, up_out, down_site, mode="frozen"):
    """A function of one value (scalar or tensor) for one example: ``up_out(value)`` is the
    output of site ``up_site``; returns D's nodes as functions of D's input x_D,
    (encode(x_D) [P, S], x_D - decode(encode(x_D)) [P, d]), or the metric if ``down_site`` is
    None. Every other site outputs its clean value (``mode="frozen"``) or, for the unfrozen
    Jacobians of eq. 6, decode(encode(x)) + eps_clean (features live, errors fixed)."""

    def fn(value):
        got = {}

        def up(act, hook):
            return up_out(value).reshape(act.shape)

        def capture(act, hook):
            sae = ex.saes[hook.name]
            f = sae.encode(act)
            got["v"] = (f[0], (act - sae.decode(f))[0])
            raise _Stop

        def clean(act, hook):
            return ex.clean_out(hook.name)

        def live(act, hook):
            sae = ex.saes[hook.name]
            return sae.decode(sae.encode(act)) + ex.clean[hook.name][1]

        hooks = []
        for h in ex.sites:
            if h == up_site:
                hooks.append((h, up))
            elif h == down_site:
                hooks.append((h, capture))
            else:
                hooks.append((h, clean if mode == "frozen" else live))
        with torch.enable_grad(), ex.model.hooks(fwd_hooks=hooks):
            try:
                logits = ex.model(ex.tokens)
            except _Stop:
                return got["v"]
        return ex.metric(logits)[0]

    return fn


def jac(fn, x):
    return jacobian(fn, x, vectorize=True)


def contract(J, delta):
    """J [out..., in...] . delta [in...] -> [out...]."""
    n = delta.dim()
    return (J * delta).sum(tuple(range(J.dim() - n, J.dim()))) if n else J * delta


def down_edge(dnode, v, g):
    """grad_d m . v for downstream node d, v = (dD_f, dD_e) the change of D's nodes; summed
    over positions when d's position is None ("sum" aggregation)."""
    _, q, j = dnode
    (vf, ve), (gf, ge) = v, g
    qs = slice(None) if q is None else q
    if j is None:
        return float((ge[qs] * ve[qs]).sum())
    return float((gf[qs, j] * vf[qs, j]).sum())


def by_site(nodes, sites=SITES):
    out = {h: [] for h in sites}
    for n in nodes:
        out[n[0]].append(n)
    return out


def jacobian_truth(examples, grads, nodes, mode="frozen"):
    """(upstream id, downstream id) -> mean over examples of grad_d m . dd/du . delta_u, with
    dd/du from torch.autograd.functional.jacobian of u -> D's nodes (one per u and D)."""
    order = examples[0].sites
    sites = by_site(nodes, order)
    total: dict = {}
    for ex, g in zip(examples, grads):
        for i, up_site in enumerate(order):
            for u in sites[up_site]:
                delta = node_delta(ex, u)
                for down_site in order[i + 1 :]:
                    if not sites[down_site]:
                        continue
                    J = jac(
                        make_fn(ex, up_site, node_out(ex, u), down_site, mode), node_value(ex, u)
                    )
                    v = tuple(contract(Jx, delta) for Jx in J)
                    for d in sites[down_site]:
                        key = (nid(u), nid(d))
                        total[key] = total.get(key, 0.0) + down_edge(d, v, g[down_site])
    return {k: t / len(examples) for k, t in total.items()}


def frame_dict(df):
    return {(u, d): e for u, d, e in df[["upstream", "downstream", "effect"]].itertuples(False)}


def kind(node_id):
    return "e" if "/err" in node_id else "f"


def check_edges(df, truth, atol=2e-5, rtol=1e-4, min_scale=1e-3, metric=False):
    """Library edges (missing = 0) against the ground truth; no edges outside the truth."""
    got = frame_dict(df)
    if not metric:
        got = {k: v for k, v in got.items() if k[1] != "metric"}
    extra = set(got) - set(truth)
    assert not extra, f"edges not in the ground truth: {sorted(extra)[:5]}"
    bad = []
    for key, want in truth.items():
        g = got.get(key, 0.0)
        if abs(g - want) > atol + rtol * abs(want):
            bad.append(f"{key}: got {g:.7g}, expected {want:.7g}")
    assert not bad, f"{len(bad)} of {len(truth)} edges differ:\n" + "\n".join(bad[:20])
    return got


def assert_nonvacuous(truth, min_scale=1e-3, kinds=("ff", "fe", "ef", "ee")):
    """Every edge kind (feature/error -> feature/error) has a clearly non-zero ground truth."""
    for k in kinds:
        vals = [abs(v) for (u, d), v in truth.items() if kind(u) + kind(d) == k and d != "metric"]
        assert vals and max(vals) > min_scale, f"vacuous {k} ground truth: {max(vals, default=0)}"


def pick_nodes(examples, positions=POSITIONS, per_pos=2, sites=SITES):
    """Per site and position: the error and the `per_pos` features most often active on the
    clean input and changed by the ablation (so both as u and as d they carry signal)."""
    nodes = []
    for h in sites:
        f_c = torch.cat([ex.clean[h][0] for ex in examples])
        f_a = torch.cat([ex.ablated[h][0] for ex in examples])
        score = (f_c > 0).float().mean(0) + ((f_a - f_c).abs() > 1e-6).float().mean(0)
        score = score + 1e-3 * f_c.abs().mean(0)  # break ties
        for p in positions:
            for i in score[p].topk(per_pos).indices.tolist():
                nodes.append((h, p, i))
            nodes.append((h, p, None))
    return nodes


def _edges(model, saes, nodes, **kw):
    kw = {"ablation": "patch", "batch_size": 2, "progress": False, **kw}
    data = kw.pop("data", PAIR_ROWS)
    return edge_effects(model, saes, data, [nid(n) for n in nodes], **kw)


def vjp_truth(examples, grads, nodes):
    """Own loop, one ``torch.autograd.grad`` per downstream node and example: every site outputs
    decode(f_leaf) + eps_leaf (leaves at clean values, so it depends on nothing upstream) and
    computes its nodes from its input; grad of grad_d m * d w.r.t. earlier sites' leaves, times
    delta_u. -> (upstream id, downstream id) -> mean over examples."""
    order = examples[0].sites
    sites = by_site(nodes, order)
    total: dict = {}
    for ex, g in zip(examples, grads):
        leaves = {h: tuple(t.clone().requires_grad_(True) for t in ex.clean[h]) for h in order}
        down = {}

        def hook(act, hook, leaves=leaves, down=down, ex=ex):
            sae = ex.saes[hook.name]
            f = sae.encode(act)
            down[hook.name] = (f[0], (act - sae.decode(f))[0])
            return sae.decode(leaves[hook.name][0]) + leaves[hook.name][1]

        with torch.enable_grad(), ex.model.hooks(fwd_hooks=[(h, hook) for h in order]):
            ex.model(ex.tokens)
        for i, dh in enumerate(order):
            ups = [h for h in order[:i] if sites[h]]
            for d in sites[dh]:
                _, q, j = d
                gf, ge = g[dh]
                f_d, e_d = down[dh]
                target = (gf[q, j] * f_d[q, j]) if j is not None else (ge[q] * e_d[q]).sum()
                if not ups or not target.requires_grad:
                    continue
                inputs = [t for h in ups for t in leaves[h]]
                gr = torch.autograd.grad(target, inputs, retain_graph=True, allow_unused=True)
                for k, uh in enumerate(ups):
                    g_f, g_e = (
                        torch.zeros_like(x) if y is None else y
                        for x, y in zip(leaves[uh], gr[2 * k : 2 * k + 2])
                    )
                    for u in sites[uh]:
                        _, p, fi = u
                        if fi is None:
                            val = float((g_e[0, p] * node_delta(ex, u)).sum())
                        else:
                            val = float(g_f[0, p, fi] * node_delta(ex, u))
                        key = (nid(u), nid(d))
                        total[key] = total.get(key, 0.0) + val
    return {k: t / len(examples) for k, t in total.items()}


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
