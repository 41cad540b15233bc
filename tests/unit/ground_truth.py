"""Ground truth for the attribution tests, computed independently of sfc_plugin: plain
TransformerLens hooks (``model.hooks``), each dictionary's own ``encode``/``decode`` and
``torch.autograd``.

A site is a dictionary keyed by the hook it writes; an SAE reads the same hook, a SAELens
transcoder reads ``cfg.metadata.hook_name`` (``read_hook``). Its nodes are
``f = encode(x_read)`` and ``eps = x_written - decode(f)``; an intervention replaces the
written activation by ``decode(f') + eps'``.

Node effects (METHOD.md section 2): ``brute_force_exact`` (one patched forward per node),
``brute_force_atp`` and ``brute_force_ig`` (gradients with only the site replaced by
``decode(f_leaf) + eps_leaf``), per example.

Edges (section 3), per example: ``IE(u -> d) = grad_d m . (dd/du) . (u_ablated - u_clean)``
with ``dd/du`` the Jacobian at the clean input with every other site's output held at its
clean value (``make_fn`` + ``torch.autograd.functional.jacobian``), ``grad_d m`` with only
D's output replaced (``Example.down_grads``); ``vjp_truth`` is the same by one
``torch.autograd.grad`` per downstream node. Nodes are ``(hook, pos, feature)`` with feature
None for the error and pos None under "sum" aggregation.
"""

from __future__ import annotations

import torch
from sae_lens import Transcoder
from torch.autograd.functional import jacobian

# Contrastive agreement pairs, all 5 tokens long with the embedded tokenizer.
AGREEMENT_PAIRS = [
    {"clean_prefix": c, "patch_prefix": p, "clean_answer": ca, "patch_answer": pa}
    for c, p, ca, pa in [
        ("The cat near the dog", "The cats near the dog", " is", " are"),
        ("The authors that the guard", "The author that the guard", " like", " likes"),
        ("The boy near the cars", "The boys near the cars", " has", " have"),
        ("The teachers near the house", "The teacher near the house", " are", " is"),
        ("The doctor that the farmers", "The doctors that the farmers", " likes", " like"),
    ]
]


def answer_id(model, text):
    ids = model.to_tokens(text, prepend_bos=False)[0]
    assert len(ids) == 1, f"answer {text!r} is not one token"
    return int(ids[0])


def pair_tokens(model, rows):
    """clean [B,P], patch [B,P], clean answers [B], patch answers [B]; all prefixes equal length."""
    clean = [model.to_tokens(r["clean_prefix"])[0] for r in rows]
    patch = [model.to_tokens(r["patch_prefix"])[0] for r in rows]
    assert len({len(t) for t in clean + patch}) == 1, "pairs must all have one token length"
    ca = torch.tensor([answer_id(model, r["clean_answer"]) for r in rows])
    pa = torch.tensor([answer_id(model, r["patch_answer"]) for r in rows])
    assert (ca != pa).all()
    return torch.stack(clean), torch.stack(patch), ca, pa


def logit_diff(logits, ca, pa):
    """Default pair metric at the last position (all prefixes have equal length here)."""
    last = logits[:, -1]
    return last.gather(1, pa[:, None])[:, 0] - last.gather(1, ca[:, None])[:, 0]


def answer_logprob(logits, ans):
    """Default single-input metric for unpadded rows: log p(answer) at the last position."""
    return logits[:, -1].log_softmax(-1).gather(1, ans[:, None])[:, 0]


def read_hook(hook: str, dictionary) -> str:
    """The hook a dictionary keyed by ``hook`` (the hook it writes) reads: a SAELens
    transcoder's ``cfg.metadata.hook_name``; an SAE reads the hook it writes."""
    return dictionary.cfg.metadata.hook_name if isinstance(dictionary, Transcoder) else hook


@torch.no_grad()
def site_values(model, saes, tokens, hooks=None):
    """hook -> (f, eps) of the unmodified model on ``tokens`` (every hook of ``saes`` unless
    ``hooks``): ``f = encode(x_read)``, ``eps = x_written - decode(f)``."""
    hooks = list(saes) if hooks is None else list(hooks)
    names = set(hooks) | {read_hook(h, saes[h]) for h in hooks}
    _, cache = model.run_with_cache(tokens, names_filter=list(names))
    out = {}
    for h in hooks:
        f = saes[h].encode(cache[read_hook(h, saes[h])])
        out[h] = (f, cache[h] - saes[h].decode(f))
    return out


# ----------------------------------------------------------------------------------------------
# Node effects
# ----------------------------------------------------------------------------------------------


def ablated_values(ablation, clean, patch=None):
    """hook -> (f_abl, eps_abl), templatic: patch values, zeros, or the per-position mean over
    all rows."""
    out = {}
    for h, (f, e) in clean.items():
        if ablation == "patch":
            out[h] = patch[h]
        elif ablation == "zero":
            out[h] = (torch.zeros_like(f), torch.zeros_like(e))
        elif ablation == "mean":
            out[h] = (f.mean(0, keepdim=True).expand_as(f), e.mean(0, keepdim=True).expand_as(e))
        else:
            raise ValueError(ablation)
    return out


def run_with_site(model, sae, hook, tokens, f, e):
    """Logits with the site's output replaced by decode(f) + e."""

    def replace(act, hook):
        out = sae.decode(f) + e
        assert out.shape == act.shape
        return out

    return model.run_with_hooks(tokens, fwd_hooks=[(hook, replace)])


@torch.no_grad()
def brute_force_exact(model, sae, hook, tokens, metric, fc, ec, fa, ea, positions=None):
    """Per-example exact effects [B, P, S] and [B, P]: one patched forward per node (the
    S + 1 nodes of one position are stacked on the batch axis; rows do not interact)."""
    B, P, S = fc.shape
    m_clean = metric(model(tokens))
    feat = torch.zeros(B, P, S)
    err = torch.zeros(B, P)
    for p in range(P) if positions is None else positions:
        f_var = fc.unsqueeze(0).repeat(S + 1, 1, 1, 1)  # [S+1, B, P, S]
        e_var = ec.unsqueeze(0).repeat(S + 1, 1, 1, 1)  # [S+1, B, P, d]
        for i in range(S):
            f_var[i, :, p, i] = fa[:, p, i]  # node (feature i, position p)
        e_var[S, :, p] = ea[:, p]  # node (error, position p)
        n = (S + 1) * B
        logits = run_with_site(
            model,
            sae,
            hook,
            tokens.repeat(S + 1, 1),
            f_var.reshape(n, P, S),
            e_var.reshape(n, P, -1),
        )
        eff = (metric(logits).reshape(S + 1, B) - m_clean).T  # [B, S+1]
        feat[:, p] = eff[:, :S]
        err[:, p] = eff[:, S]
    return feat, err


def site_grads(model, sae, hook, tokens, metric, f, e):
    """dm/df, dm/de with the site output replaced by decode(f_leaf) + e_leaf (per example: the
    metric is summed over rows, which do not interact)."""
    f_leaf = f.detach().clone().requires_grad_(True)
    e_leaf = e.detach().clone().requires_grad_(True)
    logits = run_with_site(model, sae, hook, tokens, f_leaf, e_leaf)
    return torch.autograd.grad(metric(logits).sum(), [f_leaf, e_leaf])


def brute_force_atp(model, sae, hook, tokens, metric, fc, ec, fa, ea):
    gf, ge = site_grads(model, sae, hook, tokens, metric, fc, ec)
    return gf * (fa - fc), (ge * (ea - ec)).sum(-1)


def brute_force_ig(model, sae, hook, tokens, metric, fc, ec, fa, ea, steps):
    """(1/N) sum_k grad at (1 - k/N) a_c + (k/N) a_a, all nodes of the site together."""
    gf_sum = torch.zeros_like(fc)
    ge_sum = torch.zeros_like(ec)
    for k in range(steps):
        alpha = k / steps
        gf, ge = site_grads(
            model,
            sae,
            hook,
            tokens,
            metric,
            (1 - alpha) * fc + alpha * fa,
            (1 - alpha) * ec + alpha * ea,
        )
        gf_sum += gf
        ge_sum += ge
    return gf_sum / steps * (fa - fc), (ge_sum / steps * (ea - ec)).sum(-1)


def pair_ground_truth(model, saes, hooks, rows, ablation, kind, metric=None, steps=None):
    """Templatic ground truth on ``rows``: hook -> ([P, S], [P]) (mean over examples)."""
    clean, patch, ca, pa = pair_tokens(model, rows)
    if metric is None:

        def metric(logits):
            n = logits.shape[0] // len(ca)
            return logit_diff(logits, ca.repeat(n), pa.repeat(n))

    cv = site_values(model, saes, clean, hooks)
    pv = site_values(model, saes, patch, hooks) if ablation == "patch" else None
    av = ablated_values(ablation, cv, pv)
    out = {}
    for h in hooks:
        args = (model, saes[h], h, clean, metric, *cv[h], *av[h])
        if kind == "exact":
            feat, err = brute_force_exact(*args)
        elif kind == "atp":
            feat, err = brute_force_atp(*args)
        else:
            feat, err = brute_force_ig(*args, steps=steps)
        out[h] = (feat.mean(0), err.mean(0))
    return out


def check_effects(res, truth, atol=2e-5, rtol=1e-4, min_scale=1e-3):
    """Library node effects against the ground truth, which must not be vacuous."""
    assert set(res.features) == set(truth) and set(res.errors) == set(truth)
    for h, (feat, err) in truth.items():
        # The ground truth must not be trivially zero, or the comparison proves nothing.
        assert feat.abs().max() > min_scale, f"{h}: vacuous feature ground truth"
        assert err.abs().max() > min_scale, f"{h}: vacuous error ground truth"
        assert res.features[h].shape == feat.shape, h
        assert res.errors[h].shape == err.shape, h
        for name, got, want in (
            ("features", res.features[h], feat),
            ("errors", res.errors[h], err),
        ):
            torch.testing.assert_close(
                got.detach().float(),
                want,
                atol=atol,
                rtol=rtol,
                msg=lambda m, h=h, name=name: f"{h} {name}: {m}",
            )


# ----------------------------------------------------------------------------------------------
# Evaluation (faithfulness and completeness)
# ----------------------------------------------------------------------------------------------


def write_hooks(saes, sites, on_write):
    """Plain TL hooks calling ``on_write(hook, x_read, x_written) -> new written activation`` at
    each site of ``sites`` (forward order); a transcoder's read hook keeps its input."""
    seen = {}

    def keep(act, hook):
        seen[hook.name] = act

    def write(act, hook):
        read = read_hook(hook.name, saes[hook.name])
        return on_write(hook.name, act if read == hook.name else seen[read], act)

    hooks = []
    for h in sites:
        if read_hook(h, saes[h]) != h:
            hooks.append((read_hook(h, saes[h]), keep))
        hooks.append((h, write))
    return hooks


def own_means(model, saes, tokens):
    """Per-position means of every site's features and error, by a plain recording pass."""
    values = {}

    def rec(h, x_in, x):
        f = saes[h].encode(x_in)
        values[h] = (f.mean(0), (x - saes[h].decode(f)).mean(0))
        return x

    with torch.no_grad(), model.hooks(fwd_hooks=write_hooks(saes, list(saes), rec)):
        model(tokens)
    return values


def brute_metric(model, saes, pairs, keep, means, sites=None):
    """Mean logit difference on ``pairs`` with every node not in ``keep`` (node ids) set to its
    mean, site by site in forward order."""
    tokens = model.to_tokens([p["clean_prefix"] for p in pairs])
    sites = list(saes) if sites is None else sites

    def ablate(h, x_in, x):
        sae = saes[h]
        f = sae.encode(x_in)
        e = x - sae.decode(f)
        mf, me = means[h]
        f2, e2 = f.clone(), e.clone()
        for p in range(x.shape[1]):
            for i in range(f.shape[-1]):
                if f"{h}/f{i}@{p}" not in keep:
                    f2[:, p, i] = mf[p, i]
            if f"{h}/err@{p}" not in keep:
                e2[:, p] = me[p]
        return sae.decode(f2) + e2

    with torch.no_grad(), model.hooks(fwd_hooks=write_hooks(saes, sites, ablate)):
        logits = model(tokens)[:, -1]
    clean = torch.tensor([model.to_single_token(p["clean_answer"]) for p in pairs])
    patch = torch.tensor([model.to_single_token(p["patch_answer"]) for p in pairs])
    rows = torch.arange(len(pairs))
    return float((logits[rows, patch] - logits[rows, clean]).mean())


# ----------------------------------------------------------------------------------------------
# Edges
# ----------------------------------------------------------------------------------------------


def logit_diff_metric(ca, pa):
    """Default pair metric: logit(patch answer) - logit(clean answer) at the last position."""

    def metric(logits):
        last = logits[:, -1]
        return last.gather(1, pa[:, None])[:, 0] - last.gather(1, ca[:, None])[:, 0]

    return metric


def answer_logprob_metric(ans):
    """Default single-input metric (unpadded row): log p(answer) at the last position."""

    def metric(logits):
        return logits[:, -1].log_softmax(-1).gather(1, ans[:, None])[:, 0]

    return metric


class Example:
    """One example: tokens [1, P], its metric, clean and ablated node values [1, P, .] at the
    sites `saes` (a dict in forward order)."""

    def __init__(self, model, saes, tokens, metric, ablated=None):
        self.model, self.saes, self.tokens, self.metric = model, saes, tokens, metric
        self.sites = list(saes)
        self.reads = {h: read_hook(h, d) for h, d in saes.items()}
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


def pair_examples(model, saes, rows):
    clean, patch, ca, pa = pair_tokens(model, rows)
    out = []
    for b in range(len(rows)):
        ablated = site_values(model, saes, patch[b : b + 1])
        metric = logit_diff_metric(ca[b : b + 1], pa[b : b + 1])
        out.append(Example(model, saes, clean[b : b + 1], metric, ablated))
    return out


def single_examples(model, saes, rows):
    """Single inputs, each run unpadded on its own; zero ablation."""
    toks = [model.to_tokens(r["prefix"]) for r in rows]
    assert len({t.shape[1] for t in toks}) == len(rows), "rows should differ in length"
    answers = [torch.tensor([answer_id(model, r["answer"])]) for r in rows]
    return [Example(model, saes, t, answer_logprob_metric(a)) for t, a in zip(toks, answers)]


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
    output of site ``up_site``; returns D's nodes as functions of D's read input x_D and
    written activation y_D, (encode(x_D) [P, S], y_D - decode(encode(x_D)) [P, d]), or the
    metric if ``down_site`` is None. Every other site outputs its clean value
    (``mode="frozen"``) or, for the unfrozen Jacobians of eq. 6, decode(encode(x)) +
    eps_clean (features live, errors fixed)."""

    def fn(value):
        got = {}
        seen = {}

        def x_in(act, hook):
            read = ex.reads[hook.name]
            return act if read == hook.name else seen[read]

        def keep(act, hook):
            seen[hook.name] = act

        def up(act, hook):
            return up_out(value).reshape(act.shape)

        def capture(act, hook):
            sae = ex.saes[hook.name]
            f = sae.encode(x_in(act, hook))
            got["v"] = (f[0], (act - sae.decode(f))[0])
            raise _Stop

        def clean(act, hook):
            return ex.clean_out(hook.name)

        def live(act, hook):
            sae = ex.saes[hook.name]
            return sae.decode(sae.encode(x_in(act, hook))) + ex.clean[hook.name][1]

        hooks = []
        for h in ex.sites:
            if h == up_site:
                hooks.append((h, up))
                continue
            fn_h = capture if h == down_site else clean if mode == "frozen" else live
            if ex.reads[h] != h and fn_h is not clean:
                hooks.append((ex.reads[h], keep))
            hooks.append((h, fn_h))
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


def by_site(nodes, sites):
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


def pick_nodes(examples, positions, sites, per_pos=2):
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
        seen = {}

        def keep(act, hook, seen=seen):
            seen[hook.name] = act

        def hook(act, hook, leaves=leaves, down=down, ex=ex, seen=seen):
            sae = ex.saes[hook.name]
            read = ex.reads[hook.name]
            f = sae.encode(act if read == hook.name else seen[read])
            down[hook.name] = (f[0], (act - sae.decode(f))[0])
            return sae.decode(leaves[hook.name][0]) + leaves[hook.name][1]

        hooks = []
        for h in order:
            if ex.reads[h] != h:
                hooks.append((ex.reads[h], keep))
            hooks.append((h, hook))
        with torch.enable_grad(), ex.model.hooks(fwd_hooks=hooks):
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
