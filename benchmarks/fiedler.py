"""Cost and accuracy of `probes.graph.fiedler_value` against a dense eigendecomposition.

    python -m benchmarks.fiedler [--repeats 5] [--dtype float32|float64] [--beta 1.0] [--no-minilm]

(as a module, from the repository root: run as a script, its folder comes first on sys.path and
benchmarks/probes.py would shadow the probes package)

Cases, all in this one run:
- random softmax patterns of MiniLM's shape at 512 tokens, [72, 512, 512] (6 layers × 12 heads,
  bidirectional), and of GPT-2 small's at 450 tokens, [144, 450, 450] (12 × 12, causal):
  softmax(β·z) of Gaussian logits z;
- the real MiniLM's 72 patterns at 512 tokens (traced offline through `interp`), unless
  --no-minilm.
For each: the median time of `fiedler_value(graph)` (graph = attention_graph(pattern), built
once, untimed; its own time is printed), the median time of the dense route in the same dtype
(form D^{-1/2} S D^{-1/2}, batched `torch.linalg.eigvalsh`, take the second largest), their
ratio, and the largest |difference| of each from the float64 reference (a float64 `eigvalsh`
per graph, untimed), plus how many graphs fiedler_value handed to its dense fallback.
"""

from __future__ import annotations

import argparse
import math

import torch

from benchmarks import _common
from probes import graph
from probes.graph import attention_graph, fiedler_value

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def softmax_patterns(b: int, n: int, beta: float, causal: bool, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, n, generator=gen) * beta
    if causal:
        logits.masked_fill_(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
    return logits.softmax(-1)


def minilm_patterns(n_tokens: int = 512) -> torch.Tensor:
    """The real all-MiniLM-L6-v2's attention on `n_tokens` tokens of this repository's README."""
    import interp
    from pathlib import Path

    model = interp.load("minilm")
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text() * 4
    ids = model.tokenizer(text)["input_ids"][:n_tokens]
    return interp.trace(model, torch.tensor(ids)).pattern.reshape(-1, n_tokens, n_tokens)


def dense_fiedler(s: torch.Tensor) -> torch.Tensor:
    """λ₂ by a full eigendecomposition, in s's dtype: the route fiedler_value replaces."""
    r = s.sum(-1).rsqrt()
    return 1.0 - torch.linalg.eigvalsh(r[..., :, None] * s * r[..., None, :])[..., -2]


def reference(s: torch.Tensor) -> torch.Tensor:
    """float64, one graph at a time (batched float64 eigvalsh is several times slower here)."""
    return torch.stack([dense_fiedler(x.double()) for x in s])


def median_seconds(f, repeats: int) -> float:
    return _common.median_seconds({"f": f}, repeats, torch.device("cpu"))["f"]


def count_fallbacks(s: torch.Tensor) -> tuple[torch.Tensor, int]:
    """fiedler_value(s) and the number of graphs it handed to its dense fallback."""
    calls = []
    dense = graph._dense_mu2
    graph._dense_mu2 = lambda x: (calls.append(1), dense(x))[1]
    try:
        return fiedler_value(s), len(calls)
    finally:
        graph._dense_mu2 = dense


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--beta", type=float, default=1.0,
                        help="logit scale of the random patterns")
    parser.add_argument("--no-minilm", action="store_true", help="skip the real MiniLM patterns")
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype]

    beta = args.beta
    cases = {
        f"softmax beta={beta} bidirectional [72, 512, 512]":
            lambda: softmax_patterns(72, 512, beta, False, seed=0),
        f"softmax beta={beta} causal [144, 450, 450]":
            lambda: softmax_patterns(144, 450, beta, True, seed=1),
    }
    if not args.no_minilm:
        cases["MiniLM real patterns [72, 512, 512]"] = minilm_patterns

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dtype {args.dtype}, "
          f"median of {args.repeats}")
    header = (f"{'case':48s} {'graph ms':>9s} {'fiedler ms':>11s} {'eigvalsh ms':>12s} "
              f"{'ratio':>6s} {'max|err| fiedler':>17s} {'max|err| eigvalsh':>18s} "
              f"{'fallback':>9s}")
    print(header)
    for label, make in cases.items():
        pattern = make().to(dtype).contiguous()
        t_graph = median_seconds(lambda: attention_graph(pattern), args.repeats)
        s = attention_graph(pattern)
        t_fiedler = median_seconds(lambda: fiedler_value(s), args.repeats)
        t_dense = median_seconds(lambda: dense_fiedler(s), max(1, args.repeats // 2))
        ours, fallbacks = count_fallbacks(s)
        truth = reference(s)
        err_ours = float((ours.double() - truth).abs().max())
        err_dense = float((dense_fiedler(s).double() - truth).abs().max())
        print(f"{label:48s} {t_graph * 1e3:9.1f} {t_fiedler * 1e3:11.1f} {t_dense * 1e3:12.1f} "
              f"{t_dense / t_fiedler:6.1f} {err_ours:17.1e} {err_dense:18.1e} "
              f"{fallbacks:>4d}/{s.shape[0]:<4d}")


if __name__ == "__main__":
    main()
