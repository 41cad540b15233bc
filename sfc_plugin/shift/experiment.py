"""The whole SHIFT experiment and its table (paper section 4, Table 2; METHOD.md section 7).

``run_shift`` trains the probe on the ambiguous set (male professors vs. female nurses),
finds its circuit (``probe_circuit``), describes each circuit feature by its dashboard, asks
a judge which are spurious, and scores on the balanced test set:

* original: the probe as trained;
* CBP: concept bottleneck probing (``scoring``);
* random: the original probe with as many random features ablated as SHIFT ablates (mean
  and standard deviation over seeds);
* SHIFT: the original probe with the judged-spurious features zero-ablated;
* SHIFT + retrain: a probe retrained on the ambiguous set with that ablation in place;
* feature skyline: ablate the same number of features with the largest effect on the
  probe's metric signed by *gender* on balanced training data (the reference's skyline);
* neuron skyline: the same with neurons (identity dictionaries at the same hooks), mean
  ablated as in the reference;
* oracle: a probe trained on balanced data.

The reference picks every threshold by hand; here the circuit keeps the ``n_features``
largest positive effects and the skylines ablate as many nodes as SHIFT does, so no number is
chosen after seeing a result. Every stage is written to ``out`` as it finishes; a second call
with the same ``out`` and settings resumes where the first stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch
from sae_lens import SAE
from safetensors.torch import load_file, save
from torch import Tensor
from tqdm.auto import tqdm

from sfc_plugin.datasets.bias_in_bios import Source, bias_in_bios
from sfc_plugin.dictionaries import neuron_saes
from sfc_plugin.files import check_run_settings, read_document, write_atomic, write_document
from sfc_plugin.frontend.shift_page import shift_report_html
from sfc_plugin.judges import (
    FeatureDescription,
    Judge,
    Judgement,
    describe_features,
    judge_features,
    lexicon_judge,
)
from sfc_plugin.shift.ablation import ablation_hooks, mean_features, random_features
from sfc_plugin.shift.circuit import probe_circuit, probe_sites
from sfc_plugin.shift.probe import Probe, default_probe_hook, pooled_activations, train_probe
from sfc_plugin.shift.scoring import concept_similarities, concept_vectors, scores

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from sfc_plugin.frontend.dashboards import Dashboard, FeatureIndex

SCHEMA = "sfc_plugin.shift"
SCHEMA_VERSION = 1
_FIELDS = ("table", "circuit", "errors", "ablated", "judgements", "descriptions", "skylines")

ROWS = (
    "original",
    "CBP",
    "random",
    "SHIFT",
    "SHIFT + retrain",
    "neuron skyline",
    "feature skyline",
    "oracle",
)
"""The rows of the table, in the paper's order."""

_PAPER = {
    "Pythia-70M (paper, Table 2)": {
        "original": (61.9, 87.4, 24.4),
        "CBP": (82.5, 55.0, 63.1),
        "SHIFT": (88.5, 54.0, 76.0),
        "SHIFT + retrain": (93.1, 52.0, 89.0),
        "neuron skyline": (80.6, 65.6, 46.5),
        "feature skyline": (88.5, 54.0, 62.9),
        "oracle": (93.0, 49.4, 91.9),
    },
    "Gemma-2-2B (paper)": {
        "original": (67.7, 81.9, 18.2),
        "CBP": (90.2, 50.1, 86.8),
        "SHIFT": (76.0, 51.5, 50.0),
        "SHIFT + retrain": (95.0, 52.4, 92.9),
        "neuron skyline": (65.1, 84.3, 4.6),
        "feature skyline": (80.9, 53.7, 56.7),
        "oracle": (95.0, 50.6, 92.8),
    },
}


def paper_tables() -> dict[str, pd.DataFrame]:
    """The paper's SHIFT tables (fractions; profession, gender, worst_group), for comparison.
    The paper has no random-ablation row."""
    return {
        name: pd.DataFrame.from_dict(
            {r: [v / 100 for v in rows[r]] for r in ROWS if r in rows},
            orient="index",
            columns=["profession", "gender", "worst_group"],
        )
        for name, rows in _PAPER.items()
    }


@dataclass(frozen=True)
class ShiftSettings:
    """Sizes and methods of one run (rows of ``bias_in_bios`` splits; ``n_circuit`` examples
    for each circuit; ``random_seeds`` for the random-ablation row; ``probe_epochs`` for
    every probe of the table, CBP's included: the paper trains one epoch, over ~22k
    examples)."""

    source: str = "offline"
    n_train: int = 400
    n_oracle: int = 400
    n_test: int = 400
    n_circuit: int = 64
    n_features: int = 50
    method: Literal["atp", "ig"] = "ig"
    steps: int = 10
    random_seeds: tuple[int, ...] = (0, 1, 2)
    hook: str | None = None
    seed: int = 42
    batch_size: int = 16
    circuit_batch_size: int = 4
    probe_epochs: int = 1


@dataclass
class ShiftResult:
    """The table (``table``: one row per ``ROWS`` entry; columns profession, gender,
    worst_group accuracy, their standard deviations over seeds for "random", and n_ablated),
    the circuit's features with each judgement (``circuit``), the ablated node ids, the
    skylines' node ids, the descriptions the judge saw, settings and seconds per stage."""

    table: pd.DataFrame
    circuit: pd.DataFrame
    errors: pd.DataFrame
    ablated: list[str]
    judgements: list[Judgement]
    descriptions: list[FeatureDescription]
    skylines: dict[str, list[str]]
    settings: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"ShiftResult({len(self.circuit)} circuit features, {len(self.ablated)} judged "
            f"spurious)\n{self.table.round(3).to_string()}"
        )

    def report_html(self, dashboards: Mapping[str, Dashboard] | None = None) -> str:
        """The offline HTML report: this table beside the paper's, the settings, and every
        circuit feature with its judgement (and ``dashboards[node]`` if given)."""
        return shift_report_html(
            self.table,
            self.circuit,
            settings={k: v for k, v in self.settings.items() if k != "saes"},
            timings=self.timings,
            title="SHIFT: " + str(self.settings.get("model", "")),
            references=paper_tables(),
            dashboards=dashboards,
        )

    def save_html(self, path: str | Path, index: FeatureIndex | None = None) -> None:
        """Write ``report_html`` to ``path``, with dashboards from ``index`` if given."""
        boards = None
        if index is not None:
            boards = {
                str(n): index.dashboard(str(h), int(i))
                for n, h, i in zip(self.circuit.node, self.circuit.hook_name, self.circuit.feature)
            }
        write_atomic(Path(path), self.report_html(boards).encode())

    def save(self, path: str | Path) -> None:
        """Write the result as JSON (schema ``sfc_plugin.shift``, version 1), atomically."""
        body = {
            "table": self.table.reset_index().to_dict(orient="records"),
            "circuit": self.circuit.to_dict(orient="records"),
            "errors": self.errors.to_dict(orient="records"),
            "ablated": self.ablated,
            "judgements": [j.to_dict() for j in self.judgements],
            "descriptions": [d.to_dict() for d in self.descriptions],
            "skylines": self.skylines,
            "settings": self.settings,
            "timings": self.timings,
        }
        write_document(path, SCHEMA, SCHEMA_VERSION, body)

    @classmethod
    def load(cls, path: str | Path) -> ShiftResult:
        """Read a result written by ``save``; clear errors for other files and versions."""
        doc = read_document(path, SCHEMA, SCHEMA_VERSION, "SHIFT result", _FIELDS)
        return cls(
            table=pd.DataFrame(doc["table"]).set_index("row"),
            circuit=pd.DataFrame(doc["circuit"]),
            errors=pd.DataFrame(doc["errors"]),
            ablated=list(doc["ablated"]),
            judgements=[Judgement.from_dict(j) for j in doc["judgements"]],
            descriptions=[FeatureDescription(**d) for d in doc["descriptions"]],
            skylines={k: list(v) for k, v in doc["skylines"].items()},
            settings=doc["settings"],
            timings=doc.get("timings", {}),
        )


def _digest(values: list[str]) -> str:
    return hashlib.sha256("\n".join(values).encode()).hexdigest()[:12]


class _Stages:
    """Results of finished stages under ``out`` (None: nothing kept), each file written
    atomically, so an interrupted run resumes at the first missing stage."""

    def __init__(self, out: Path | None, settings: dict[str, Any]):
        self.out = out
        if out is None:
            return
        check_run_settings(out, settings, "a SHIFT run")

    def tensor(self, name: str, compute: Callable[[], Tensor]) -> Tensor:
        if self.out is None:
            return compute()
        path = self.out / f"{name}.safetensors"
        if path.exists():
            return load_file(str(path))["value"]
        value = compute()
        write_atomic(path, save({"value": value.detach().cpu().contiguous()}))
        return value

    def json(self, name: str, compute: Callable[[], Any]) -> Any:
        if self.out is None:
            return compute()
        path = self.out / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text())
        value = compute()
        write_atomic(path, json.dumps(value, indent=1).encode())
        return value


def run_shift(
    model: HookedTransformer,
    saes: Mapping[str, SAE],
    *,
    judge: Judge | None = None,
    settings: ShiftSettings = ShiftSettings(),
    index: FeatureIndex | None = None,
    out: str | Path | None = None,
    source: Source | None = None,
    progress: bool = True,
) -> ShiftResult:
    """Run SHIFT and every baseline; return the table (see the module docstring).

    Args:
        model: the language model (frozen throughout).
        saes: hook name -> SAE; those writing after the probe's hook are left out.
        judge: decides which circuit features are spurious (default ``lexicon_judge()``).
        settings: sizes, attribution method and seeds (``ShiftSettings``).
        index: a ``FeatureIndex`` of ``saes`` (``feature_index``): the judge sees each
            feature's dashboard; None gives it the node and effect only.
        out: directory for each finished stage (resumable) and ``result.json``.
        source: a ``bias_in_bios`` source other than ``settings.source`` (e.g. a local file
            mapping), not recorded in the settings.
    """
    judge = judge if judge is not None else lexicon_judge()
    s = settings
    hook = s.hook or default_probe_hook(model)
    record = {**asdict(s), "hook": hook, "random_seeds": list(s.random_seeds)}
    record["model"] = model.cfg.model_name
    record["saes"] = sorted(saes)
    stages = _Stages(None if out is None else Path(out), record)
    timings: dict[str, float] = {}
    src = source if source is not None else s.source

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        value = fn()
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        return value

    train = bias_in_bios("ambiguous", "train", source=src, n=s.n_train, seed=s.seed)
    oracle_data = bias_in_bios("balanced", "train", source=src, n=s.n_oracle, seed=s.seed)
    test = bias_in_bios("balanced", "test", source=src, n=s.n_test, seed=s.seed)

    def acts(name: str, frame: pd.DataFrame, hooks=()) -> Tensor:
        return stages.tensor(
            name,
            lambda: pooled_activations(
                model,
                list(frame.text),
                hook,
                fwd_hooks=hooks,
                batch_size=s.batch_size,
                progress=progress,
            ),
        )

    def probe_on(x: Tensor, labels) -> Probe:
        return train_probe(
            None, None, list(labels), hook=hook, activations=x, seed=s.seed, epochs=s.probe_epochs
        )

    a_train = timed("activations", lambda: acts("acts_train", train))
    a_test = timed("activations", lambda: acts("acts_test", test))
    probe = probe_on(a_train, train.profession)
    rows: dict[str, dict[str, float]] = {"original": _row(probe.logits_of(a_test), test)}

    concepts = concept_vectors(model, hook)
    cbp = probe_on(concept_similarities(a_train, concepts), train.profession)
    rows["CBP"] = _row(cbp.logits_of(concept_similarities(a_test, concepts)), test)

    sites = probe_sites(saes, probe)

    def circuit_of(name: str, dictionaries, frame: pd.DataFrame, labels, n: int) -> dict:
        """The circuit's features, errors and seconds (kept as stage ``name``)."""

        def compute() -> dict[str, Any]:
            c = probe_circuit(
                model,
                dictionaries,
                probe,
                list(frame.text[: s.n_circuit]),
                list(labels[: s.n_circuit]),
                n_features=n,
                method=s.method,
                steps=s.steps,
                batch_size=s.circuit_batch_size,
                progress=progress,
            )
            return {
                "features": c.features.to_dict(orient="records"),
                "errors": c.errors.to_dict(orient="records"),
                "seconds": c.seconds,
            }

        return timed(name, lambda: stages.json(name, compute))

    doc = circuit_of("circuit", sites, train, train.profession, s.n_features)
    features = pd.DataFrame(doc["features"], columns=["node", "hook_name", "feature", "effect"])
    errors = pd.DataFrame(doc["errors"], columns=["node", "hook_name", "effect"])
    descriptions = describe_features(features, index)
    judgements = timed("judge", lambda: judge_features(descriptions, judge, progress=progress))
    ablated = [j.node for j in judgements if j.spurious]
    k = len(ablated)

    def ablated_row(name: str, hooks) -> tuple[dict[str, float], Tensor]:
        """The original probe's scores on the test set with ``hooks`` attached."""
        x = timed("ablated activations", lambda: acts(name, test, hooks))
        return _row(probe.logits_of(x), test), x

    randoms = []
    for seed in tqdm(s.random_seeds, desc="random ablations", disable=not progress):
        nodes = random_features(sites, k, seed=seed)
        randoms.append(
            ablated_row(f"acts_test_random{seed}_k{k}", ablation_hooks(model, sites, nodes))[0]
        )
    rows["random"] = _mean_row(randoms)

    shift_hooks = ablation_hooks(model, sites, ablated)
    tag = _digest(ablated)
    rows["SHIFT"], a_test_shift = ablated_row(f"acts_test_shift_{tag}", shift_hooks)
    a_train_shift = timed(
        "ablated activations", lambda: acts(f"acts_train_shift_{tag}", train, shift_hooks)
    )
    retrained = probe_on(a_train_shift, train.profession)
    rows["SHIFT + retrain"] = _row(retrained.logits_of(a_test_shift), test)

    skylines: dict[str, list[str]] = {"neuron": [], "feature": []}
    if k:
        neurons = neuron_saes(model, list(sites))
        doc = circuit_of(f"neuron_skyline_k{k}", neurons, oracle_data, oracle_data.gender, k)
        skylines["neuron"] = [r["node"] for r in doc["features"]]
        means = stages.tensor(
            "neuron_means",
            lambda: torch.cat(
                list(
                    mean_features(
                        model, neurons, list(oracle_data.text), batch_size=s.batch_size
                    ).values()
                )
            ),
        )
        values = dict(zip(neurons, torch.split(means, [neurons[h].cfg.d_sae for h in neurons])))
        hooks = ablation_hooks(model, neurons, skylines["neuron"], values=values)
        rows["neuron skyline"], _ = ablated_row(
            f"acts_test_neurons_{_digest(skylines['neuron'])}", hooks
        )
        doc = circuit_of(f"feature_skyline_k{k}", sites, oracle_data, oracle_data.gender, k)
        skylines["feature"] = [r["node"] for r in doc["features"]]
        hooks = ablation_hooks(model, sites, skylines["feature"])
        rows["feature skyline"], _ = ablated_row(
            f"acts_test_features_{_digest(skylines['feature'])}", hooks
        )
    else:  # nothing judged spurious: the skylines ablate nothing either
        rows["neuron skyline"] = rows["feature skyline"] = rows["original"]

    a_oracle = timed("activations", lambda: acts("acts_oracle", oracle_data))
    rows["oracle"] = _row(probe_on(a_oracle, oracle_data.profession).logits_of(a_test), test)

    table = pd.DataFrame.from_dict({r: rows[r] for r in ROWS}, orient="index")
    table.index.name = "row"
    n_ablated = {"random": k, "SHIFT": k, "SHIFT + retrain": k}
    n_ablated |= {f"{kind} skyline": len(nodes) for kind, nodes in skylines.items()}
    table["n_ablated"] = [n_ablated.get(r, 0) for r in ROWS]
    marks = {j.node: j for j in judgements}
    features = features.assign(
        spurious=[marks[n].spurious for n in features.node],
        reason=[marks[n].reason for n in features.node],
        judge=[marks[n].judge for n in features.node],
    )
    result = ShiftResult(
        table=table,
        circuit=features,
        errors=errors,
        ablated=ablated,
        judgements=judgements,
        descriptions=descriptions,
        skylines=skylines,
        settings=record,
        timings=timings,
    )
    if out is not None:
        result.save(Path(out) / "result.json")
        result.save_html(Path(out) / "report.html", index)
    return result


def _row(logits: Tensor, data: pd.DataFrame) -> dict[str, float]:
    return scores((logits > 0).long(), data)


def _mean_row(rows: list[dict[str, float]]) -> dict[str, float]:
    frame = pd.DataFrame(rows)
    mean = {str(k): float(v) for k, v in frame.mean().items()}
    return mean | {f"{k}_sd": float(v) for k, v in frame.std(ddof=0).items()}
