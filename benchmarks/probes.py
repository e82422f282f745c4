"""Cost of the metastability probe set against a plain Hugging Face forward.

    python -m benchmarks.probes [--repeats 7] [--device cpu|cuda]   (a module: the file name
    would shadow the probes package as a script)

Cases: the real MiniLM traced at 512 tokens (6 layers x 12 heads: 72 attention graphs of
512 x 512) and a random GPT-2-small-shaped model at 450 tokens (144 graphs of 450 x 450). The
probe set is every per-layer and per-head quantity of the seed-003 study, over every layer and
head of one Trace: unit-sphere Gram (computed once, shared), mass near 1, effective rank, HDBSCAN
cluster count, nearest-neighbour stability, CKA to the next layer and the full CKA matrix,
inner-product histograms, Fiedler lambda_2 per head (minus the uniform-causal baseline where
causal), attention entropy, E_beta for 4 betas, per-head OV and full-layer value spectral
radius. Printed: median probe time / median plain HF eager forward time, both measured here.
Goals: <= 2.0x for MiniLM and <= 0.6x for the GPT-2-small shape.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, GPT2Config

import interp
import probes
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
        "ov_radius": probes.ov_spectral_radius(tr.W_V, tr.W_O),
        "value_radius": probes.layer_ov_spectral_radius(tr.W_V, tr.W_O),
    }


def plain_forward(source: Path, random_init: bool, device: torch.device):
    if random_init:  # weights do not change the cost; the architecture does
        m = AutoModel.from_config(AutoConfig.from_pretrained(source), attn_implementation="eager")
    else:
        m = AutoModel.from_pretrained(source, attn_implementation="eager")
    return m.to(device).eval()


def median_seconds(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    keep_freed_memory()  # an analysis process: see interp.runtime
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    goals = {"minilm": 2.0, "gpt2-small-shape-random": 0.6}
    with tempfile.TemporaryDirectory() as tmp:
        GPT2Config().save_pretrained(tmp)
        cases = {"minilm": (interp.models._minilm_dir(), 512, False),
                 "gpt2-small-shape-random": (Path(tmp), 450, True)}
        for label, (source, n, random_init) in cases.items():
            model = interp.load(source, random_init=random_init, device=device)
            plain = plain_forward(source, random_init, device)
            ids = torch.randint(1000, model.d_vocab - 1000, (n,),
                                generator=torch.Generator().manual_seed(0))
            tr = interp.trace(model, ids)

            def forward():
                with torch.no_grad():
                    plain(ids[None].to(device))

            parts = {"probes": lambda: metastability_probes(tr), "hf_eager": forward}
            t = median_seconds(parts, args.repeats, device)
            ratio = t["probes"] / t["hf_eager"]
            print(json.dumps({"case": label, "tokens": n, "graphs": tr.pattern.shape[0] *
                              tr.pattern.shape[1], "probes_s": round(t["probes"], 4),
                              "hf_eager_s": round(t["hf_eager"], 4),
                              "probes/hf_eager": round(ratio, 3), "goal": goals[label]}),
                  flush=True)


if __name__ == "__main__":
    main()
