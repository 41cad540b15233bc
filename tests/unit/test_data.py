"""Data loading, tokenization and the errors users see for bad input (each names the row)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_saes, make_tiny_model

from sfc_plugin.attribution import node_effects
from sfc_plugin.data import read_dataset, tokenize

PAIRS = [
    {
        "clean_prefix": "The cat near the dog",
        "patch_prefix": "The cats near the dog",
        "clean_answer": " is",
        "patch_answer": " are",
    },
    {
        "clean_prefix": "The man near the car",
        "patch_prefix": "The men near the car",
        "clean_answer": " is",
        "patch_answer": " are",
    },
]


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_tiny_model("sequential", tokenizer)


@pytest.fixture(scope="module")
def saes(model):
    return make_saes(model, ["blocks.1.hook_resid_post"])


def test_jsonl_round_trip_and_reference_format(tmp_path):
    path = tmp_path / "pairs.jsonl"
    # The reference implementation's files carry extra keys; they are ignored.
    path.write_text("\n".join(json.dumps({**p, "case": "singular"}) for p in PAIRS) + "\n")
    ds = read_dataset(path)
    assert ds.is_pairs and len(ds) == 2
    assert ds.examples[1].patch_prefix == "The men near the car"
    out = tmp_path / "out.jsonl"
    ds.to_jsonl(out)
    assert read_dataset(out).examples == ds.examples


def test_single_inputs_read():
    ds = read_dataset([{"prefix": "The cat", "answer": " is"}])
    assert not ds.is_pairs and ds.examples[0].clean_answer == " is"


def test_single_inputs_without_answers_need_a_metric_of_their_own(model, saes):
    """Rows may leave out the answer (a probe's metric reads no answer); the default
    log-prob metric then says what is missing."""
    rows = [{"prefix": "The cat sat"}, {"prefix": "A dog"}]
    ds = read_dataset(rows)
    assert [ex.clean_answer for ex in ds.examples] == [None, None]
    assert ds.examples[0].to_record() == rows[0]
    batch = tokenize(model, ds, same_length=False, need_patch=False).tokens
    assert batch.clean_answer.tolist() == [-1, -1]
    with pytest.raises(ValueError, match="some rows have no answer"):
        node_effects(model, saes, rows, ablation="zero", aggregation="sum", progress=False)
    res = node_effects(
        model,
        saes,
        rows,
        method="atp",
        metric=lambda logits, batch: logits[:, 0, 0],
        ablation="zero",
        aggregation="sum",
        progress=False,
    )
    assert res.n_examples == 2


def test_empty_data_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        read_dataset([])
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_dataset(path)


def test_missing_key_names_the_row_and_line(tmp_path):
    rows = [PAIRS[0], {k: v for k, v in PAIRS[1].items() if k != "patch_answer"}]
    with pytest.raises(ValueError, match=r"row 1 .*patch_answer"):
        read_dataset(rows)
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match=r"row 1 \(line 2 of .*bad.jsonl\)"):
        read_dataset(path)


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2"):
        read_dataset(path)


def test_mixed_rows_and_non_string_values_are_errors():
    with pytest.raises(ValueError, match="row 1 is a single row"):
        read_dataset([PAIRS[0], {"prefix": "The cat", "answer": " is"}])
    with pytest.raises(ValueError, match="row 0"):
        read_dataset([{"prefix": "The cat", "answer": 3}])
    with pytest.raises(ValueError, match="row 0 is a list"):
        read_dataset([["The cat", " is"]])


def test_multi_token_answer_names_the_row(model):
    rows = [PAIRS[0], {**PAIRS[1], "patch_answer": " arenaceously"}]
    with pytest.raises(ValueError, match=r"row 1: patch_answer ' arenaceously' is \d tokens"):
        tokenize(model, read_dataset(rows), same_length=True, need_patch=True)


def test_unequal_clean_patch_length_is_an_error_only_when_templatic(model, saes):
    rows = [PAIRS[0], {**PAIRS[1], "patch_prefix": "The men and women near the car"}]
    ds = read_dataset(rows)
    with pytest.raises(ValueError, match=r"row 1: clean_prefix is \d+ tokens but patch_prefix"):
        tokenize(model, ds, same_length=True, need_patch=True)
    with pytest.raises(ValueError, match="row 1"):
        node_effects(model, saes, rows, method="atp")
    # Summed over positions, the lengths may differ: both sides are right-padded to one width.
    tok = tokenize(model, ds, same_length=False, need_patch=True)
    assert tok.tokens.patch_tokens.shape == tok.tokens.clean_tokens.shape
    effects = node_effects(model, saes, rows, method="atp", aggregation="sum")
    assert effects.features["blocks.1.hook_resid_post"].shape == (24,)


def test_rows_of_different_lengths_are_an_error_only_when_templatic(model):
    rows = [
        {"prefix": "The cat", "answer": " is"},
        {"prefix": "The big black cat", "answer": " is"},
    ]
    ds = read_dataset(rows)
    with pytest.raises(ValueError, match="row 1: clean_prefix is 4 tokens but row 0's is 2"):
        tokenize(model, ds, same_length=True, need_patch=False)
    tok = tokenize(model, ds, same_length=False, need_patch=False)
    assert tok.tokens.last.tolist() == [1, 3]
    assert tok.tokens.mask.sum(1).tolist() == [2, 4]


def test_tokenization_follows_the_models_prepend_bos(tokenizer):
    model = make_tiny_model("sequential", tokenizer)
    model.cfg.default_prepend_bos = True
    tok = tokenize(model, read_dataset(PAIRS), same_length=True, need_patch=True)
    assert (tok.tokens.clean_tokens[:, 0] == tokenizer.bos_token_id).all()
    expected = model.to_tokens(PAIRS[0]["clean_prefix"])[0]
    assert torch.equal(tok.tokens.clean_tokens[0], expected)


def test_bad_arguments_name_themselves(model, saes):
    with pytest.raises(ValueError, match="method"):
        node_effects(model, saes, PAIRS, method="eap")
    with pytest.raises(ValueError, match="ablation"):
        node_effects(model, saes, PAIRS, ablation="resample")
    with pytest.raises(ValueError, match="aggregation"):
        node_effects(model, saes, PAIRS, aggregation="mean")
    with pytest.raises(ValueError, match="steps"):
        node_effects(model, saes, PAIRS, steps=0)
    with pytest.raises(ValueError, match="patch.*pairs"):
        node_effects(model, saes, [{"prefix": "The cat", "answer": " is"}], ablation="patch")
    with pytest.raises(ValueError, match="not a hook point"):
        node_effects(model, {"blocks.9.hook_resid_post": saes["blocks.1.hook_resid_post"]}, PAIRS)
    with pytest.raises(ValueError, match="no SAEs"):
        node_effects(model, {}, PAIRS)


def test_metric_must_return_one_value_per_example(model, saes):
    with pytest.raises(ValueError, match="one value per example"):
        node_effects(
            model, saes, PAIRS, method="atp", metric=lambda logits: logits[:, -1, 0].mean()
        )


def test_sae_width_mismatch_names_the_site(model):
    wrong = make_saes(model, ["blocks.0.hook_mlp_out"])["blocks.0.hook_mlp_out"]
    wrong.cfg.d_in = 7  # a dictionary trained for another model
    with pytest.raises(ValueError, match="blocks.0.hook_mlp_out.*d_in is 7"):
        node_effects(model, {"blocks.0.hook_mlp_out": wrong}, PAIRS, method="atp")
