"""What the benchmarks share: the two cases, the plain HF forward they compare to, the timer."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, GPT2Config

import interp


def cases(tmp: Path) -> dict[str, tuple[Path, int, bool]]:
    """label -> (checkpoint or config directory, tokens, random_init)."""
    GPT2Config().save_pretrained(tmp)  # GPT-2 small shape: 12 layers, 12 heads, d 768
    return {
        "minilm": (interp.models._minilm_dir(), 512, False),
        "gpt2-small-shape-random": (Path(tmp), 450, True),
    }


def plain_model(source: Path, random_init: bool, device: torch.device, impl: str = "eager"):
    """The HF base model (no head) of the case's architecture, with attention `impl`."""
    if random_init:  # weights do not change the cost; the architecture does
        m = AutoModel.from_config(AutoConfig.from_pretrained(source), attn_implementation=impl)
    else:
        m = AutoModel.from_pretrained(source, attn_implementation=impl)
    return m.to(device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call after one warm-up each; calls are interleaved so machine drift
    hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}
