"""Cost of `interp.trace` against a plain Hugging Face forward of the same architecture.

    python -m benchmarks.trace [--repeats 9] [--device cpu|cuda]

Cases: the real MiniLM at 512 tokens, and a random GPT-2-small-shaped model at 450 tokens.
Timed, interleaved in this one run (median of `--repeats`):
- trace: `interp.trace` capturing every layer's residual and attention;
- hf_eager / hf_sdpa: the HF base model (no head), no outputs requested, eager attention
  (what a trace needs to see probabilities) and the default SDPA kernel;
- hf_outputs: the same with output_hidden_states and output_attentions (eager), the way a
  researcher gets these tensors without this toolkit (as tuples, not yet stacked).
Peak memory: on the CPU each call runs once in a fresh process (after an 8-token call that
does the one-time set-up of a first forward) and the high-water mark of its resident set
(VmHWM) above the resident set just before the call is reported; on CUDA,
max_memory_allocated above the allocation before the call. A first trace also stacks the
model's W_Q, W_K, W_V, W_O once (kept for later traces); its size is reported on its own. Target: trace <= 1.2x hf_eager.
Timings are taken twice: with the default allocator, then after
`interp.runtime.keep_freed_memory()` (see that module for why a trace's output pays page faults
a plain forward does not).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import interp
from benchmarks._common import cases, median_seconds, plain_model, sync
from interp.runtime import keep_freed_memory

METHODS = ("trace", "hf_eager", "hf_sdpa", "hf_outputs")


def callables(source: Path, n_tokens: int, random_init: bool, device: torch.device):
    """One zero-argument callable per method, all on the same token ids, and the MiB of the
    attention weights a model stacks once on its first trace and keeps for the next."""
    model = interp.load(source, device=device, random_init=random_init)
    plain = {impl: plain_model(source, random_init, device, impl) for impl in ("eager", "sdpa")}
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.d_vocab - 1000, (n_tokens,), generator=gen)

    def hf(impl, **outputs):
        def run(ids):
            with torch.no_grad():
                plain[impl](ids[None].to(device), **outputs)
        return run

    methods = {
        "trace": lambda ids: interp.trace(model, ids),
        "hf_eager": hf("eager"),
        "hf_sdpa": hf("sdpa"),
        "hf_outputs": hf("eager", output_hidden_states=True, output_attentions=True),
    }
    weights_mib = sum(w.untyped_storage().nbytes() for w in model.attention_weights().values())
    bind = lambda x: {k: (lambda f=f: f(x)) for k, f in methods.items()}
    # The short sequence runs first in a peak measurement: it triggers the one-time set-up of
    # a first forward (the bridge's is ~130 MB for GPT-2 small) while allocating little.
    return bind(ids), bind(ids[:8]), weights_mib / 2**20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def peak_mib(fn, device: torch.device) -> float:
    """Peak memory of one call of `fn` above what was in use just before it."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def peak_in_fresh_process(label: str, method: str) -> float:
    """CPU allocators keep freed pages, so each peak is taken in a process of its own."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.trace", "--peak-of", label, method],
        check=True, capture_output=True, text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--peak-of", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        table = cases(Path(tmp))
        if args.peak_of:
            label, method = args.peak_of
            fns, warm, _ = callables(*table[label], torch.device("cpu"))
            warm[method]()
            print(peak_mib(fns[method], torch.device("cpu")))
            return
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
        worst = {}
        # Default allocator first: keep_freed_memory cannot be undone within a process.
        for mode in ("default allocator", "interp.runtime.keep_freed_memory()"):
            if mode != "default allocator" and not keep_freed_memory():
                print(f"{mode}: not available on this C library; skipped")
                break
            print(f"-- {mode}")
            for label, spec in table.items():
                fns, warm, weights_mib = callables(*spec, device)
                t = median_seconds(fns, args.repeats, device)
                row = {"case": label, "tokens": spec[1], "weights_stacked_once_MiB": round(weights_mib, 1)}
                row |= {f"{k}_s": round(t[k], 4) for k in METHODS}
                row |= {f"trace/{k}": round(t["trace"] / t[k], 3) for k in METHODS[1:]}
                if mode == "default allocator":  # one call's peak does not depend on reuse
                    if device.type == "cuda":
                        mem = {k: peak_mib(fn, device) for k, fn in fns.items()}
                    else:
                        del fns, warm
                        mem = {k: peak_in_fresh_process(label, k) for k in METHODS}
                    row |= {f"peak_{k}_MiB": round(mem[k], 1) for k in METHODS}
                print(json.dumps(row), flush=True)
                worst[mode] = max(worst.get(mode, 0.0), t["trace"] / t["hf_eager"])
        for mode, ratio in worst.items():
            print(f"worst trace / plain eager forward, {mode}: {ratio:.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
