"""Cost of each behaviours stage on the embedded model, as ratios measured in one run.

    .venv/bin/python benchmarks/behaviours.py [--samples 64] [--threads 2] [--no-ray]

Setup: SmolLM2-135M and its 30 bundled SAEs; ``--samples`` samples taken by
``behaviours.samples`` from the bundled held-out text (loss < 0.1, 16-64 context tokens).

* Unit: one forward of the plain model and a backward of the answer's log-probability to
  the embeddings, per sample (batched like the representations, 16 per forward).
* Samples: samples kept per second and target tokens scanned per second.
* Representations: seconds per sample of each kind (positions summed), as a ratio to the
  unit; ``gradients`` on 8 samples (one backward per sample), with the projection's memory.
* Clustering: spectral (k = 100) on 8,192 and k-means (k = 1,000) on 65,536 synthetic
  unit vectors in 256 dimensions (16 planted directions plus noise).
* Circuits: one cluster's circuit (AtP, 50 discovery + 50 held-out samples) and the Ray
  engine's overhead on the same 4 clusters (``ray.init(num_cpus=2)``), as a ratio.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np
import torch

from sfc_plugin import load_model, load_saes
from sfc_plugin.behaviours import (
    CircuitSettings,
    SparseProjection,
    cluster,
    cluster_circuits,
    gradient_parameters,
    represent,
    samples,
)
from sfc_plugin.data import Batch, prepended_bos, right_pad
from sfc_plugin.datasets.text import read_texts
from sfc_plugin.metrics import answer_logprob


def unit_seconds(model, found, batch_size: int = 16) -> float:
    """Seconds per sample of a plain forward + backward of log p(answer) to the embeddings."""
    bos = prepended_bos(model)
    start = time.perf_counter()
    for lo in range(0, len(found), batch_size):
        part = found.iloc[lo : lo + batch_size]
        rows = [bos + list(c) for c in part.context_tokens]
        batch = Batch(
            clean_tokens=right_pad(rows),
            clean_answer=torch.tensor(list(part.answer_token)),
            last=torch.tensor([len(r) - 1 for r in rows]),
            mask=right_pad([[1] * len(r) for r in rows]).bool(),
        )
        embed = []

        def grab(x, hook, embed=embed):
            x = x.detach().requires_grad_()
            embed.append(x)
            return x

        logits = model.run_with_hooks(
            batch.clean_tokens, fwd_hooks=[("hook_embed", grab)], padding_side="right"
        )
        torch.autograd.grad(answer_logprob(logits, batch).sum(), embed)
    return (time.perf_counter() - start) / len(found)


def synthetic(n: int, dim: int = 256, groups: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim))
    return (centres[rng.integers(groups, size=n)] + 0.5 * rng.normal(size=(n, dim))).astype(
        np.float32
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--no-ray", dest="ray", action="store_false")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m")
    model.requires_grad_(False)
    saes = load_saes("smollm2-135m-sfc")

    start = time.perf_counter()
    found = samples(model, read_texts(), max_samples=args.samples, documents_per_shard=4)
    seconds = time.perf_counter() - start
    counts = found.attrs["counts"]
    print(
        f"samples: {len(found)} kept of {counts['targets']} targets in {seconds:.1f} s: "
        f"{len(found) / seconds:.1f} samples/s, {counts['targets'] / seconds:.0f} targets/s"
    )
    unit = unit_seconds(model, found)
    print(f"unit (plain forward+backward, per sample): {1000 * unit:.1f} ms")
    for kind in ("activations", "sae_activations", "effects", "sae_effects"):
        reps = represent(model, found, kind, saes=saes, positions="sum", progress=False)
        per = reps.seconds / len(found)
        print(
            f"{kind:16s}: {1000 * per:7.1f} ms/sample = {per / unit:5.2f} units, "
            f"{reps.values.shape[1]} dims"
        )
    few = found.iloc[:8]
    params = gradient_parameters(model)
    d = sum(p.numel() for _, p in params)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    projection = SparseProjection([p.numel() for _, p in params], 30_000)
    build = time.perf_counter() - t0
    print(
        f"gradient projection: D = {d:,} parameters, {projection.per_entry} outputs per entry, "
        f"index {projection.nbytes / 2**30:.2f} GiB, built in {build:.1f} s"
    )
    del projection
    reps = represent(model, few, "gradients", progress=False)
    per = reps.seconds / len(few)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"gradients       : {1000 * per:7.1f} ms/sample = {per / unit:5.2f} units (projection "
        f"built inside), peak RSS {rss / 2**20:.2f} GiB (+{(rss - rss0) / 2**20:.2f} GiB)"
    )

    for n, k, method in ((8192, 100, "spectral"), (65536, 1000, "kmeans")):
        result = cluster(synthetic(n), k, method=method)  # type: ignore[arg-type]
        print(f"clustering {n} samples, k = {k} ({method}): {result.seconds:.1f} s")

    circuit_samples = samples(model, read_texts(), max_samples=400, documents_per_shard=8)
    labels = np.arange(len(circuit_samples)) % 4  # 4 clusters of about 100
    settings = CircuitSettings(n_examples=50)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        local = cluster_circuits(
            model, saes, circuit_samples, labels, f"{tmp}/local", settings=settings
        )
        local_s = time.perf_counter() - t0
        print(
            f"circuits, local: {local_s / 4:.1f} s per cluster ({local.n_nodes.mean():.0f} "
            f"nodes, {local.n_edges.mean():.0f} edges on average)"
        )
        if args.ray:
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            t0 = time.perf_counter()
            cluster_circuits(
                model,
                saes,
                circuit_samples,
                labels,
                f"{tmp}/ray",
                settings=settings,
                engine="ray",
                num_cpus=1,
            )
            ray_s = time.perf_counter() - t0
            ray.shutdown()
            print(
                f"circuits, Ray (2 tasks of 1 CPU at once): {ray_s:.1f} s for 4 clusters, "
                f"{ray_s / local_s:.2f} x the local engine's {local_s:.1f} s"
            )


if __name__ == "__main__":
    main()
