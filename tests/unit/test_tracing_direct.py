"""``sfc_plugin.tracing.direct``: direct effects in the frozen replacement model.

Ground truth, independent of sfc_plugin (plain TransformerLens hooks, each dictionary's own
``encode``/``decode``), in circuit-tracer's design: with every attention pattern and norm
scale frozen at the clean run and every dictionary output frozen at ``decode(f) + eps`` (so
no node reacts to another), *remove* or *double* one source's contribution (``a_s d_s`` for
a feature, the error vector, an embedding or a frozen MLP output at one position) and
measure the change in the target: it is ``-DE`` and ``+DE`` exactly, the model being
affine in its nodes. And completeness: removing every node at once changes the target by
the sum of all direct effects.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    TRACING_ROWS,
    clean_replacement_run,
    dictionary_read_hook,
    is_frozen_hook,
    make_random_sae,
    make_replacement_dictionaries,
    make_tiny_model,
    pre_activation,
    replacement_leaf_hooks,
)

from sfc_plugin.tracing.direct import direct_effects

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = TRACING_ROWS
N_LAYERS = 3
N_POS = 4


def make_saes(skip_mlp: tuple[int, ...] = ()):
    return make_replacement_dictionaries(N_LAYERS, skip_mlp)


class FrozenModel:
    """The frozen replacement model of the examples ``ROWS``, built from plain hooks."""

    def __init__(self, model, saes):
        self.model, self.saes = model, saes
        self.tokens = torch.stack(
            [model.to_tokens(r["clean_prefix"], prepend_bos=False)[0] for r in ROWS]
        )
        assert self.tokens.shape[1] == N_POS
        self.frozen, self.feats, self.errs, self.leaves = clean_replacement_run(
            model, saes, self.tokens
        )

    def vector(self, node: str) -> tuple[str, int, torch.Tensor]:
        """``(hook, position, [n, d])``: the node's contribution to its hook's output."""
        hook, rest = node.split("/")
        name, pos = rest.split("@")
        p = int(pos)
        if name == "err":
            store = self.errs if hook in self.errs else self.leaves
            return hook, p, store[hook][:, p]
        i = int(name[1:])
        sae = self.saes[hook]
        return hook, p, self.feats[hook][:, p, i : i + 1] * sae.W_dec[i]

    def target(self, spec, delta: dict[tuple[str, int], torch.Tensor] | None = None):
        """``[n]``: the target's value with ``delta[(hook, pos)]`` ``[n, d]`` added to the
        frozen outputs."""
        delta = delta or {}
        saes, reads = self.saes, {}

        def add(out, hook):
            out = out.clone()
            for (h, p), v in delta.items():
                if h == hook.name:
                    out[:, p] += v
            return out

        def frozen(x, hook):
            return self.frozen[hook.name]

        def keep_read(x, hook):
            reads[hook.name] = x

        def site(x, hook):
            sae = saes[hook.name]
            return add(sae.decode(self.feats[hook.name]) + self.errs[hook.name], hook)

        def leaf(x, hook):
            return add(self.leaves[hook.name], hook)

        hooks = [(is_frozen_hook, frozen)]
        hooks += [(dictionary_read_hook(h, s), keep_read) for h, s in saes.items()]
        hooks += [(h, site) for h in saes]
        hooks += [(h, leaf) for h in replacement_leaf_hooks(self.model, saes)]
        with torch.no_grad(), self.model.hooks(fwd_hooks=hooks):
            logits = self.model(self.tokens)
        last = logits[:, -1]
        tok = self.model.to_single_token
        if spec == "metric":
            return last[:, tok(" a")] - last[:, tok(" the")]
        if isinstance(spec, tuple):
            return last[:, tok(spec[0])] - last[:, tok(spec[1])]
        if "/" not in spec:
            return last[:, tok(spec)]
        hook, rest = spec.split("/")
        feature, pos = (int(x) for x in rest[1:].split("@"))
        sae = saes[hook]
        return pre_activation(sae, reads[dictionary_read_hook(hook, sae)][:, pos], feature)

    def all_nodes(self) -> list[str]:
        nodes = []
        for hook, f in self.feats.items():
            for p, i in (f.abs().sum(0) > 0).nonzero().tolist():
                nodes.append(f"{hook}/f{i}@{p}")
        for hook in [*self.errs, *self.leaves]:
            nodes += [f"{hook}/err@{p}" for p in range(N_POS)]
        return nodes


def _effects(table, target_name):
    """``{source: [n]}`` and the target's values from a ``direct_effects`` table."""
    rows = table[table.target == target_name]
    assert len(rows), f"no rows for target {target_name!r}: {sorted(set(table.target))}"
    n = len(ROWS)
    out: dict[str, torch.Tensor] = {}
    for source, example, effect in zip(rows.source, rows.example, rows.effect):
        out.setdefault(source, torch.zeros(n))[example] = effect
    return out.pop("value"), out


@pytest.fixture(scope="module")
def models(tokenizer):
    return {
        fam: make_tiny_model(fam, tokenizer, seed=5, n_layers=N_LAYERS)
        for fam in ("sequential", "parallel", "llama")
    }


def _feature_target(truth: FrozenModel, hook: str, pos: int) -> str:
    """A feature of ``hook`` at ``pos`` active in at least one example."""
    f = truth.feats[hook][:, pos]
    return f"{hook}/f{int(f.amax(0).argmax())}@{pos}"


CASES = [
    ("sequential", ()),
    ("parallel", ()),
    ("llama", ()),
    ("parallel", (1,)),  # an MLP without a transcoder: its output is a frozen error node
]


@pytest.mark.parametrize("family, skip", CASES)
def test_remove_or_double_one_source(models, family, skip):
    model = models[family]
    saes = make_saes(skip)
    truth = FrozenModel(model, saes)
    targets = [
        "metric",
        " the",
        (" the", " a"),
        _feature_target(truth, "blocks.2.hook_mlp_out", 3),
        _feature_target(truth, "blocks.2.hook_attn_out", 2),
    ]
    table = direct_effects(model, saes, ROWS, targets, progress=False)
    names = ["metric", "logit(' the')", "logit(' the')-logit(' a')", targets[3], targets[4]]
    nodes = truth.all_nodes()
    checked = 0
    for spec, name in zip(targets, names):
        value, effects = _effects(table, name)
        base = truth.target(spec)
        assert torch.allclose(value, base, atol=1e-4), (name, value, base)
        assert set(effects) <= set(nodes), set(effects) - set(nodes)
        scale = max(float(v.abs().max()) for v in effects.values())
        assert scale > 0.05, f"vacuous: the largest direct effect on {name} is {scale}"
        # the largest sources of each kind, and the leaves this case freezes
        ranked = sorted(effects, key=lambda k: -float(effects[k].abs().max()))
        feats = [k for k in ranked if "/f" in k][:8]
        errs = [k for k in ranked if "/err" in k][:4]
        leaves = [k for k in ranked if k.split("/")[0] in truth.leaves][:3]
        # and nodes the table omits (zero direct effect): later positions, downstream hooks
        zeros = [k for k in nodes if k not in effects][:6]
        for node in dict.fromkeys(feats + errs + leaves + zeros):
            hook, p, v = truth.vector(node)
            de = effects.get(node, torch.zeros(len(ROWS)))
            for c in (-1.0, 1.0):
                change = truth.target(spec, {(hook, p): c * v}) - base
                tol = 1e-4 * max(1.0, scale)
                assert torch.allclose(change, c * de, atol=tol), (name, node, c, change, de)
            checked += 1
        assert leaves, f"no embedding or frozen MLP node has an effect on {name}"
    assert checked >= 5 * 15
    if skip:
        frozen = {k for k in table.source if k.startswith("blocks.1.hook_mlp_out/")}
        assert frozen and all("/err@" in k for k in frozen)


@pytest.mark.parametrize("family", ["sequential", "llama"])
def test_direct_effects_are_complete(models, family):
    """Removing every node at once (features, errors, embeddings) changes each target by
    the sum of its direct effects: nothing but constants (biases) is left out."""
    model = models[family]
    saes = make_saes((2,))
    truth = FrozenModel(model, saes)
    targets = ["metric", _feature_target(truth, "blocks.1.hook_mlp_out", 3)]
    table = direct_effects(model, saes, ROWS, targets, progress=False)
    everything = {}
    for node in truth.all_nodes():
        hook, p, v = truth.vector(node)
        everything[(hook, p)] = everything.get((hook, p), 0) - v
    for spec, name in zip(targets, ["metric", targets[1]]):
        value, effects = _effects(table, name)
        total = torch.stack(list(effects.values())).sum(0)
        change = truth.target(spec, everything) - truth.target(spec)
        assert torch.allclose(change, -total, atol=1e-4 * max(1.0, float(total.abs().max())))
        assert float(total.abs().max()) > 0.05


def test_batch_rows_do_not_change_the_effects(models):
    model, saes = models["llama"], make_saes()
    targets = ["metric", (" the", " a"), "blocks.2.hook_mlp_out/f3@3"]
    one = direct_effects(model, saes, ROWS, targets, batch_rows=1, progress=False)
    many = direct_effects(model, saes, ROWS, targets, batch_rows=7, progress=False)
    key = ["target", "example", "source"]
    a = one.set_index(key).effect
    b = many.set_index(key).effect
    assert set(a.index) == set(b.index)
    assert (a - b.loc[a.index]).abs().max() < 1e-5
    assert set(one.target) == {
        "metric",
        "logit(' the')-logit(' a')",
        "blocks.2.hook_mlp_out/f3@3",
    }


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(targets=" the cat"), "2 tokens"),
        (dict(targets=(" the", " cat sat")), "not one"),
        (dict(targets="blocks.2.hook_resid_post/f1@3"), "not one of the sites"),
        (dict(targets="blocks.2.hook_mlp_out/f99@3"), "d_sae"),
        (dict(targets="blocks.2.hook_mlp_out/err@3"), "one feature at one position"),
        (dict(batch_rows=0), "batch_rows"),
        (dict(missing="drop"), "missing"),
    ],
)
def test_bad_input(models, kwargs, match):
    model, saes = models["sequential"], make_saes()
    with pytest.raises(ValueError, match=match):
        direct_effects(model, saes, ROWS, progress=False, **kwargs)


def test_a_missing_transcoder_is_refused_by_name(models):
    model, saes = models["sequential"], make_saes((0, 2))
    with pytest.raises(ValueError, match=r"blocks\.0\.hook_mlp_out.*blocks\.2\.hook_mlp_out"):
        direct_effects(model, saes, ROWS, missing="refuse", progress=False)


def test_an_mlp_out_sae_feature_is_not_a_target(models):
    """An SAE reading an MLP's output: its input crosses the (unfrozen) MLP."""
    model = models["sequential"]
    hook = "blocks.1.hook_mlp_out"
    saes = {hook: make_random_sae(hook, 32, 24, seed=1)}
    with pytest.raises(ValueError, match="MLP output"):
        direct_effects(model, saes, ROWS, f"{hook}/f0@3", progress=False)
