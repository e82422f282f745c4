"""Cost of the metastability probe set against a plain Hugging Face forward.

    python -m benchmarks.probes [--repeats 7] [--device cpu|cuda]   (a module: the file name
    would shadow the probes package as a script)

Cases: the real MiniLM traced at 512 tokens (6 layers x 12 heads: 72 attention graphs of
512 x 512) and a random GPT-2-small-shaped model at 450 tokens (144 graphs of 450 x 450). The
probe set is every per-layer and per-head quantity of the seed-003 study, over every layer and
head of one Trace: unit-sphere Gram (computed once, shared), mass near 1, effective rank, HDBSCAN
cluster count, nearest-neighbour stability, CKA to the next layer and the full CKA matrix,
inner-product histograms, Fiedler lambda_2 per head (minus the uniform-causal baseline where
causal), attention entropy, E_beta for 4 betas. Printed: median probe time / median plain HF
eager forward time, both measured here; `--breakdown` adds each probe's own time. The per-head
OV and full-layer value spectral radii depend on the weights alone, so a study computes them
once per model: their time is printed on its own, not in the ratio.
Goals: <= 2.0x for MiniLM and <= 0.6x for the GPT-2-small shape.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

import interp
import probes
from benchmarks._common import cases, median_seconds, plain_model
from interp.runtime import keep_freed_memory

BETAS = (0.1, 1.0, 2.0, 5.0)


def metastability_probes(tr: interp.Trace, betas=BETAS) -> dict[str, torch.Tensor]:
    """Every probe of the set on one trace, each batched over all layers (and heads)."""
    beta = torch.tensor(betas, dtype=tr.resid.dtype, device=tr.resid.device)
    x_hat = probes.to_sphere(tr.resid)
    g = probes.gram(x_hat)
    graph = probes.attention_graph(tr.pattern)
    fiedler = probes.fiedler_value(graph)
    if tr.causal:
        n = tr.pattern.shape[-1]
        fiedler = fiedler - probes.uniform_causal_fiedler(n, dtype=fiedler.dtype,
                                                          device=fiedler.device)
    labels, n_clusters = probes.hdbscan_clusters(g, min_cluster_size=5)
    return {
        "mass_near_one": probes.mass_near_one(g),
        "effective_rank": probes.effective_rank(x_hat, variant="entropy"),
        "n_clusters": n_clusters,
        "nn_stability": probes.nn_stability(g[:-1], g[1:]),
        "cka_matrix": probes.cka_matrix(tr.resid),
        "histogram": probes.inner_product_histogram(g, bins=40),
        "fiedler": fiedler,
        "attention_entropy": probes.attention_entropy(tr.pattern).mean(-1),
        "energy": probes.log_interaction_energy(g, beta),
    }


def weight_probes(tr: interp.Trace) -> dict[str, torch.Tensor]:
    """Probes of the weights alone: once per model, not per sequence."""
    return {
        "ov_radius": probes.ov_spectral_radius(tr.W_V, tr.W_O),
        "value_radius": probes.layer_ov_spectral_radius(tr.W_V, tr.W_O),
    }


def breakdown(tr: interp.Trace, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each probe alone, on the shared Gram and graph."""
    x_hat = probes.to_sphere(tr.resid)
    g = probes.gram(x_hat)
    graph = probes.attention_graph(tr.pattern)
    beta = torch.tensor(BETAS, dtype=g.dtype, device=g.device)
    parts = {
        "gram": lambda: probes.gram(probes.to_sphere(tr.resid)),
        "mass_near_one": lambda: probes.mass_near_one(g),
        "effective_rank": lambda: probes.effective_rank(x_hat),
        "hdbscan": lambda: probes.hdbscan_clusters(g),
        "nn_stability": lambda: probes.nn_stability(g[:-1], g[1:]),
        "cka_matrix": lambda: probes.cka_matrix(tr.resid),
        "histogram": lambda: probes.inner_product_histogram(g, 40),
        "attention_graph": lambda: probes.attention_graph(tr.pattern),
        "fiedler": lambda: probes.fiedler_value(graph),
        "attention_entropy": lambda: probes.attention_entropy(tr.pattern),
        "energy": lambda: probes.log_interaction_energy(g, beta),
    }
    return {k: round(v, 4) for k, v in median_seconds(parts, repeats, device).items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--breakdown", action="store_true", help="also time each probe alone")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    keep_freed_memory()  # an analysis process: see interp.runtime
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    goals = {"minilm": 2.0, "gpt2-small-shape-random": 0.6}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (source, n, random_init) in cases(Path(tmp)).items():
            model = interp.load(source, random_init=random_init, device=device)
            plain = plain_model(source, random_init, device)
            ids = torch.randint(1000, model.d_vocab - 1000, (n,),
                                generator=torch.Generator().manual_seed(0))
            tr = interp.trace(model, ids)

            def forward():
                with torch.no_grad():
                    plain(ids[None].to(device))

            parts = {"probes": lambda: metastability_probes(tr), "hf_eager": forward}
            t = median_seconds(parts, args.repeats, device)
            ratio = t["probes"] / t["hf_eager"]
            once = median_seconds({"w": lambda: weight_probes(tr)}, 1, device)["w"]
            row = {"case": label, "tokens": n,
                   "graphs": tr.pattern.shape[0] * tr.pattern.shape[1],
                   "probes_s": round(t["probes"], 4), "hf_eager_s": round(t["hf_eager"], 4),
                   "probes/hf_eager": round(ratio, 3), "goal": goals[label],
                   "weight_probes_once_per_model_s": round(once, 4)}
            if args.breakdown:
                row["breakdown_s"] = breakdown(tr, args.repeats, device)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
