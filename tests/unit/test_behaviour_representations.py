"""Representations of behaviour samples (sfc_plugin.behaviours.representations) against ground
truth computed here, one unpadded forward per sample on BOS (if any) + its context: cached
activations, ``torch.autograd`` through zero ``delta`` tensors added at the hooks, SAE
encodings, ``node_effects``, and the gradient projection as an explicit dense matrix."""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import torch
from conftest import make_saes, make_tiny_model
from transformer_lens.components import (
    Embed,
    LayerNorm,
    LayerNormPre,
    PosEmbed,
    RMSNorm,
    RMSNormPre,
    Unembed,
)

from sfc_plugin import node_effects
from sfc_plugin.behaviours.representations import (
    KINDS,
    POSITIONS,
    SparseProjection,
    gradient_parameters,
    represent,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# the package exports the function ``represent`` etc.; the module itself, for monkeypatching
rep_module = importlib.import_module("sfc_plugin.behaviours.representations")

TEXTS = [
    "The cat sat on the mat.",
    "Water boils at one hundred degrees",
    "She said hello",
    "Paris is the capital of France, and Berlin is the capital of",
    "One two three four five six seven",
    "I am",
]
# given out of forward order on purpose; hook_z is [pos, head, d_head] (flattened)
HOOKS = [
    "blocks.2.hook_mlp_out",
    "blocks.0.hook_resid_post",
    "blocks.1.attn.hook_z",
    "hook_embed",
    "blocks.1.hook_attn_out",
]
SAE_HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_attn_out", "blocks.2.hook_mlp_out"]


def make_samples(model, texts=TEXTS) -> pd.DataFrame:
    """Rows like ``behaviours.samples``: the context is every token but the last (checked to
    round-trip as text), the answer the last."""
    bos = [model.tokenizer.bos_token_id] if model.cfg.default_prepend_bos else []
    rows = []
    for text in texts:
        ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
        context, answer = ids[:-1], ids[-1]
        prefix = model.tokenizer.decode(context)
        answer_text = model.tokenizer.decode([answer])
        assert model.to_tokens(prefix)[0].tolist() == bos + context
        assert model.to_tokens(answer_text, prepend_bos=False)[0].tolist() == [answer]
        rows.append(
            dict(context=prefix, answer=answer_text, context_tokens=context, answer_token=answer)
        )
    frame = pd.DataFrame(rows)
    lengths = frame.context_tokens.map(len)
    assert lengths.min() < 5 < lengths.max() and lengths.nunique() > 3  # last_5 cut and padding
    return frame


def bos_of(model) -> list[int]:
    return [model.tokenizer.bos_token_id] if model.cfg.default_prepend_bos else []


def own_pool(x: torch.Tensor, start: int, positions: str) -> torch.Tensor:
    """``x`` [pos, ...] of one unpadded sample; positions before ``start`` (BOS) left out."""
    x = x.reshape(x.shape[0], -1)
    if positions == "last":
        return x[-1]
    if positions == "last_5":
        return x[max(start, x.shape[0] - 5) :].sum(0)
    return x[start:].sum(0)


def forward_order(model, hooks) -> list[str]:
    """The hooks in the order they fire in a forward pass."""
    fired = []
    with (
        torch.no_grad(),
        model.hooks(fwd_hooks=[(h, lambda x, hook: fired.append(hook.name)) for h in hooks]),
    ):
        model(torch.tensor([[1, 2, 3]]))
    assert sorted(fired) == sorted(hooks)
    return fired


def own_activations(model, frame, hooks, positions):
    order = forward_order(model, hooks)
    bos = bos_of(model)
    rows = []
    for context in frame.context_tokens:
        tokens = torch.tensor([bos + list(context)])
        _, cache = model.run_with_cache(tokens, names_filter=order)
        rows.append(torch.cat([own_pool(cache[h][0], len(bos), positions) for h in order]))
    return torch.stack(rows).numpy()


def own_dense_grads(model, context, answer, hooks):
    """Activations and dm/dx at ``hooks`` of one sample, m = log p(answer) at the last
    position: a zero ``delta`` requiring grad is added at each hook."""
    bos = bos_of(model)
    xs, deltas = {}, {}

    def add(x, hook):
        xs[hook.name] = x.detach()
        deltas[hook.name] = torch.zeros_like(x, requires_grad=True)
        return x + deltas[hook.name]

    with model.hooks(fwd_hooks=[(h, add) for h in hooks]):
        logits = model(torch.tensor([bos + list(context)]))
    m = logits[0, -1].log_softmax(-1)[answer]
    grads = torch.autograd.grad(m, [deltas[h] for h in hooks])
    return {h: (xs[h][0], g[0]) for h, g in zip(hooks, grads)}


def own_effects(model, frame, hooks, positions):
    order = forward_order(model, hooks)
    start = len(bos_of(model))
    rows = []
    for context, answer in zip(frame.context_tokens, frame.answer_token):
        got = own_dense_grads(model, context, answer, order)
        rows.append(
            torch.cat([own_pool(x * g, start, positions) for x, g in (got[h] for h in order)])
        )
    return torch.stack(rows).numpy()


@pytest.fixture(
    scope="module",
    params=[("sequential", False), ("parallel", True), ("llama", True)],
    ids=["seq", "par-bos", "llama-bos"],
)
def setup(request, tokenizer):
    family, bos = request.param
    model = make_tiny_model(family, tokenizer, seed=5)
    model.cfg.default_prepend_bos = bos
    return model, make_samples(model)


def assert_close(got, want, rtol=1e-4, atol=1e-5):
    got = got.toarray() if scipy.sparse.issparse(got) else np.asarray(got)
    assert got.shape == want.shape
    assert np.abs(want).max() > 1e-3, "vacuous ground truth"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * np.abs(want).max())


@pytest.mark.parametrize("positions", POSITIONS)
def test_activations_are_the_cached_activations_pooled(setup, positions):
    model, frame = setup
    rep = represent(
        model, frame, "activations", hooks=HOOKS, positions=positions, batch_size=4, progress=False
    )
    order = forward_order(model, HOOKS)
    assert [h for h, _ in rep.blocks] == order
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([[1, 2]]), names_filter=order)
    assert [w for _, w in rep.blocks] == [cache[h][0, 0].numel() for h in order]
    assert isinstance(rep.values, np.ndarray) and len(rep) == len(frame)
    assert rep.kind == "activations" and rep.positions == positions
    assert_close(rep.values, own_activations(model, frame, HOOKS, positions))


def test_sum_leaves_out_bos_and_default_hooks(setup):
    model, frame = setup
    rep = represent(model, frame, "activations", positions="sum", progress=False)
    resid = [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    assert [h for h, _ in rep.blocks] == resid
    want = own_activations(model, frame, resid, "sum")
    assert_close(rep.values, want)
    if model.cfg.default_prepend_bos:  # BOS really is left out: with it the sums differ
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.tensor([bos_of(model)]), names_filter=resid)
        with_bos = want + torch.cat([cache[h][0, 0] for h in resid]).numpy()
        assert np.abs(with_bos - rep.values).max() > 1e-2


@pytest.mark.parametrize("positions", POSITIONS)
def test_effects_are_x_times_the_autograd_gradient(setup, positions):
    model, frame = setup
    rep = represent(
        model, frame, "effects", hooks=HOOKS, positions=positions, batch_size=4, progress=False
    )
    assert [h for h, _ in rep.blocks] == forward_order(model, HOOKS)
    assert_close(rep.values, own_effects(model, frame, HOOKS, positions))


def test_early_hook_effects_include_paths_through_later_hooks(setup):
    """The effect at an early hook is the same whether later hooks are represented too."""
    model, frame = setup
    both = represent(model, frame, "effects", hooks=HOOKS, positions="sum", progress=False)
    widths = dict(both.blocks)
    early = "blocks.0.hook_resid_post"
    lo = sum(w for h, w in both.blocks[: [h for h, _ in both.blocks].index(early)])
    alone = represent(model, frame, "effects", hooks=[early], positions="sum", progress=False)
    np.testing.assert_allclose(
        both.values[:, lo : lo + widths[early]], alone.values, rtol=1e-5, atol=1e-7
    )


def own_sae_grads(model, saes, context, answer):
    """Features and dm/df at each SAE of one sample: dm/dx from the dense autograd, pulled
    back through the decoder (the error held fixed)."""
    hooks = list(saes)
    dense = own_dense_grads(model, context, answer, hooks)
    out = {}
    for h, (x, g) in dense.items():
        f = saes[h].encode(x).detach().requires_grad_()
        (gf,) = torch.autograd.grad(saes[h].decode(f), f, grad_outputs=g)
        out[h] = (f.detach(), gf)
    return out


@pytest.fixture(scope="module")
def saes(setup):
    model, _ = setup
    # given out of forward order; the SAEs get keys in a shuffled order too
    made = make_saes(model, SAE_HOOKS, d_sae=16, seed=2)
    return {h: made[h] for h in reversed(SAE_HOOKS)}


@pytest.mark.parametrize("positions", POSITIONS)
def test_sae_activations_are_encodings_pooled(setup, saes, positions):
    model, frame = setup
    rep = represent(
        model,
        frame,
        "sae_activations",
        saes=saes,
        positions=positions,
        batch_size=4,
        progress=False,
    )
    assert scipy.sparse.isspmatrix_csr(rep.values) or isinstance(rep.values, scipy.sparse.csr_array)
    assert rep.blocks == [(h, 16) for h in SAE_HOOKS]
    bos = bos_of(model)
    rows = []
    for context in frame.context_tokens:
        with torch.no_grad():
            _, cache = model.run_with_cache(
                torch.tensor([bos + list(context)]), names_filter=SAE_HOOKS
            )
            rows.append(
                torch.cat(
                    [own_pool(saes[h].encode(cache[h][0]), len(bos), positions) for h in SAE_HOOKS]
                )
            )
    assert_close(rep.values, torch.stack(rows).numpy())


@pytest.mark.parametrize("positions", POSITIONS)
def test_sae_effects_are_features_times_autograd_gradient(setup, saes, positions):
    model, frame = setup
    rep = represent(
        model, frame, "sae_effects", saes=saes, positions=positions, batch_size=4, progress=False
    )
    assert rep.blocks == [(h, 16) for h in SAE_HOOKS]
    start = len(bos_of(model))
    rows = []
    for context, answer in zip(frame.context_tokens, frame.answer_token):
        got = own_sae_grads(model, saes, context, answer)
        rows.append(
            torch.cat([own_pool(got[h][0] * got[h][1], start, positions) for h in SAE_HOOKS])
        )
    assert_close(rep.values, torch.stack(rows).numpy())


def test_sae_effects_are_minus_zero_ablation_atp(setup, saes):
    model, frame = setup
    rep = represent(
        model, frame, "sae_effects", saes=saes, positions="sum", batch_size=4, progress=False
    )
    bos = bool(model.cfg.default_prepend_bos)
    rows = []
    for context, answer in zip(frame.context, frame.answer):
        effects = node_effects(
            model,
            saes,
            [{"prefix": context, "answer": answer}],
            method="atp",
            ablation="zero",
            aggregation="sum",
            skip_bos=bos,
            progress=False,
        )
        rows.append(-torch.cat([effects.features[h] for h in SAE_HOOKS]))
    assert_close(rep.values, torch.stack(rows).detach().numpy())


def dense_projection(projection: SparseProjection, sizes) -> torch.Tensor:
    """The operator as an explicit ``[D, n]`` matrix (duplicates accumulate, as a sum of
    the random +-scale entries of each parameter entry)."""
    total = sum(sizes)
    matrix = torch.zeros(total, projection.n, dtype=torch.float64)
    offset = 0
    for size, index, sign in zip(sizes, projection.index, projection.sign):
        rows = offset + torch.arange(size).repeat_interleave(projection.per_entry)
        values = sign.double() * projection.scale
        matrix.index_put_((rows, index.long()), values, accumulate=True)
        offset += size
    return matrix


NORM_OR_EMBEDDING = (Embed, PosEmbed, Unembed, LayerNorm, LayerNormPre, RMSNorm, RMSNormPre)


def own_included_names(model) -> list[str]:
    """Parameters not owned by an embedding, the unembedding or a norm module."""
    excluded = {
        f"{name}.{p}" if name else p
        for name, module in model.named_modules()
        if isinstance(module, NORM_OR_EMBEDDING)
        for p, _ in module.named_parameters(recurse=False)
    }
    return [n for n, _ in model.named_parameters() if n not in excluded]


@pytest.fixture(
    scope="module", params=[("sequential", False), ("llama", True)], ids=["seq", "llama-bos"]
)
def grad_setup(request, tokenizer):
    family, bos = request.param
    model = make_tiny_model(family, tokenizer, seed=9)
    model.cfg.default_prepend_bos = bos
    return model, make_samples(model)


N_PROJ = 300


def test_gradients_are_the_projected_parameter_gradient(grad_setup):
    model, frame = grad_setup
    named = gradient_parameters(model)
    names = [n for n, _ in named]
    assert names == own_included_names(model)
    all_names = {n for n, _ in model.named_parameters()}
    excluded = all_names - set(names)
    assert {"embed.W_E", "unembed.W_U"} <= excluded
    assert any(".ln" in n or "ln_final" in n for n in excluded)
    assert any("attn" in n for n in names) and any("mlp" in n for n in names)

    frozen = "blocks.0.attn.W_Q"
    model.get_parameter(frozen).requires_grad_(False)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    rep = represent(
        model, frame, "gradients", n_projections=N_PROJ, seed=3, batch_size=4, progress=False
    )
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())
    model.get_parameter(frozen).requires_grad_(True)
    assert rep.values.shape == (len(frame), N_PROJ) and rep.blocks == [("projection", N_PROJ)]
    assert rep.positions is None

    params = [p for _, p in named]
    sizes = [p.numel() for p in params]
    projection = SparseProjection(sizes, N_PROJ, seed=3)
    total = sum(sizes)
    assert projection.density == pytest.approx(total**-0.5)
    assert projection.per_entry == max(1, round(N_PROJ * total**-0.5))
    assert projection.scale == pytest.approx(total**0.25)
    matrix = dense_projection(projection, sizes)
    bos = bos_of(model)
    want = []
    for context, answer in zip(frame.context_tokens, frame.answer_token):
        model.zero_grad(set_to_none=True)
        logits = model(torch.tensor([bos + list(context)]))
        loss = -logits[0, -1].log_softmax(-1)[answer]
        loss.backward()
        g = torch.cat([p.grad.reshape(-1).double() for p in params])
        want.append(matrix.T @ g)
    model.zero_grad(set_to_none=True)
    assert_close(rep.values, torch.stack(want).numpy(), rtol=1e-4, atol=1e-5)

    again = represent(model, frame, "gradients", n_projections=N_PROJ, seed=3, progress=False)
    np.testing.assert_array_equal(again.values, rep.values)
    other = represent(model, frame, "gradients", n_projections=N_PROJ, seed=4, progress=False)
    assert np.abs(other.values - rep.values).max() > 1e-3


def test_projection_is_deterministic_under_the_seed():
    sizes = [7, 30, 1]
    a, b, c = (SparseProjection(sizes, 50, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(a.index, b.index))
    assert all(torch.equal(x, y) for x, y in zip(a.sign, b.sign))
    assert any(not torch.equal(x, y) for x, y in zip(a.index, c.index))
    parts = [torch.randn(7), torch.randn(5, 6), torch.randn(1)]
    flat = torch.cat([p.reshape(-1) for p in parts]).double()
    torch.testing.assert_close(
        a(parts).double(), dense_projection(a, sizes).T @ flat, rtol=1e-5, atol=1e-5
    )
    assert a.nbytes == sum(sizes) * a.per_entry * 5
    with pytest.raises(ValueError, match="density"):
        SparseProjection(sizes, 50, density=1.5)


def test_projection_has_per_entry_nonzeros_of_plus_minus_scale_per_column(grad_setup):
    model, _ = grad_setup
    sizes = [p.numel() for _, p in gradient_parameters(model)]
    projection = SparseProjection(sizes, N_PROJ, seed=3)
    matrix = dense_projection(projection, sizes)
    assert projection.per_entry >= 2
    nonzeros = (matrix != 0).sum(1)
    assert (nonzeros == projection.per_entry).all(), (
        f"{int((nonzeros != projection.per_entry).sum())} of {len(nonzeros)} columns"
    )
    assert torch.allclose(
        matrix[matrix != 0].abs(), torch.tensor(projection.scale, dtype=torch.float64)
    )


def test_shards_resume_and_refuse_other_settings(setup, saes, tmp_path, monkeypatch):
    model, frame = setup
    frame = frame.iloc[:5]
    dense_dir, sparse_dir = tmp_path / "dense", tmp_path / "sparse"
    kw = dict(hooks=HOOKS, positions="last_5", batch_size=1, samples_per_shard=2, progress=False)
    first = represent(model, frame, "effects", out=dense_dir, **kw)
    assert sorted(p.name for p in dense_dir.glob("shard_*.npz")) == [
        f"shard_{k:05d}.npz" for k in range(3)
    ]
    np.testing.assert_array_equal(first.values, represent(model, frame, "effects", **kw).values)
    (dense_dir / "shard_00001.npz").unlink()

    calls = []
    real = rep_module._dense_batch

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(rep_module, "_dense_batch", counted)
    again = represent(model, frame, "effects", out=dense_dir, **kw)
    assert len(calls) == 2  # the two samples of the missing shard, one batch each
    np.testing.assert_array_equal(again.values, first.values)
    calls.clear()
    np.testing.assert_array_equal(
        represent(model, frame, "effects", out=dense_dir, **kw).values, first.values
    )
    assert calls == []

    with pytest.raises(ValueError, match="positions"):
        represent(model, frame, "effects", out=dense_dir, **{**kw, "positions": "sum"})
    with pytest.raises(ValueError, match="kind"):
        represent(model, frame, "activations", out=dense_dir, **kw)
    with pytest.raises(ValueError, match="samples_digest"):
        represent(model, frame.iloc[::-1], "effects", out=dense_dir, **kw)

    sparse_kw = dict(saes=saes, positions="sum", batch_size=2, samples_per_shard=2, progress=False)
    first = represent(model, frame, "sae_activations", out=sparse_dir, **sparse_kw)
    (sparse_dir / "shard_00002.npz").unlink()
    again = represent(model, frame, "sae_activations", out=sparse_dir, **sparse_kw)
    assert scipy.sparse.issparse(again.values) and again.values.format == "csr"
    assert (again.values != first.values).nnz == 0 and first.values.nnz > 0


def test_bad_input(setup, saes):
    model, frame = setup
    with pytest.raises(ValueError, match="'bogus'") as err:
        represent(model, frame, "bogus", progress=False)
    assert all(k in str(err.value) for k in KINDS)
    with pytest.raises(ValueError, match="'first'") as err:
        represent(model, frame, "activations", positions="first", progress=False)
    assert all(p in str(err.value) for p in POSITIONS)
    for kind in ("sae_activations", "sae_effects"):
        with pytest.raises(ValueError, match="needs saes"):
            represent(model, frame, kind, progress=False)
    with pytest.raises(ValueError, match="blocks.9.hook_resid_post"):
        represent(model, frame, "activations", hooks=["blocks.9.hook_resid_post"], progress=False)
    with pytest.raises(ValueError, match="answer_token"):
        represent(model, frame.drop(columns="answer_token"), "activations", progress=False)
    with pytest.raises(ValueError, match="no samples"):
        represent(model, frame.iloc[:0], "activations", progress=False)
