"""Run a model once and return what the probes read: one `Trace`.

Why hooks with an early stop instead of a full activation cache: a study needs the residual
stream and the attention patterns, usually of every layer, sometimes of a few. Registering a
hook only on those points (`blocks.{l}.hook_resid_pre`, `blocks.{l}.attn.hook_pattern`, and the
last block's `hook_resid_post`) keeps memory at what is asked, and raising out of the forward
once the last of them has fired skips every block after it and the final norm and LM/MLM head,
which a trace never reads (for MiniLM the randomly initialised 384 x 30522 MLM head alone is
most of a bridged forward).

Conventions, per family (checked against HF `output_hidden_states` in the tests):
- `resid[l]` is the input of block l, and `resid[n_layers]` the output of the last block,
  before any final norm. GPT-2 (pre-LN) therefore differs from HF only in the last entry: HF's
  `hidden_states[-1]` is `ln_f(resid[-1])`. BERT and ALBERT (post-LN) normalise inside each
  block, so every entry equals HF's `hidden_states` (block outputs are already normalised).
- `pattern[l, h]` are attention probabilities (rows sum to 1) of block l; causal models have
  an exactly zero upper triangle.
- Text is tokenised with the model's own tokenizer and its special tokens (BERT and ALBERT:
  [CLS] ... [SEP]; GPT-2: none, as HF does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.models import Model


@dataclass(eq=False)
class Trace:
    """One forward pass of one sequence.

    `layers` are the residual indices captured (0..n_layers, where n_layers is the number of
    blocks run); `pattern_layers` the blocks whose attention and weights were captured, i.e.
    the entries of `layers` below n_layers. `resid[i]` belongs to `layers[i]` and
    `pattern[i]`, `W_*[i]` to `pattern_layers[i]`.

    The weights are the model's, stacked once and shared by its traces (see
    `Model.attention_weights`): read them, or clone before editing.
    """

    tokens: list[str]
    token_ids: Int[Tensor, " n"]
    causal: bool
    model_name: str
    n_layers: int
    layers: list[int]
    pattern_layers: list[int]
    resid: Float[Tensor, "layer n d"]
    pattern: Float[Tensor, "layer head n n"]
    W_Q: Float[Tensor, "layer head d_model d_head"]
    W_K: Float[Tensor, "layer head d_model d_head"]
    W_V: Float[Tensor, "layer head d_model d_head"]
    W_O: Float[Tensor, "layer head d_head d_model"]


class _Stop(Exception):
    """Raised by the hook on the last requested point: nothing after it is needed."""


def trace(
    model: Model,
    text_or_token_ids: str | Sequence[int] | Tensor,
    *,
    layers: Sequence[int] | None = None,
    iterations: int | None = None,
) -> Trace:
    """Run `model` on one text or one sequence of token ids and capture a `Trace`.

    `layers` restricts capture to those residual indices (0..n_layers; blocks in it also give
    their patterns and weights); the forward stops after the last of them. `iterations`
    (ALBERT only) applies the shared layer that many times, possibly beyond the trained depth.
    """
    bridge = model.bridge_for(iterations)
    n_layers = int(bridge.cfg.n_layers)
    ids = _token_ids(model, text_or_token_ids)
    captured = _layers(layers, n_layers)
    pattern_layers = [l for l in captured if l < n_layers]

    # Hooks in the order the forward fires them: resid_pre[l], pattern[l], ..., resid_post.
    # `captured` is sorted and only its last entry can be n_layers, so a block's position in
    # `captured` is also its position in `pattern_layers`.
    # Each copies its tensor into one preallocated output while it is still hot in cache;
    # stacking afterwards would cost a second pass over every attention matrix.
    points: list[tuple[str, str, int]] = []
    for i, l in enumerate(captured):
        if l < n_layers:
            points.append((f"blocks.{l}.hook_resid_pre", "resid", i))
            points.append((f"blocks.{l}.attn.hook_pattern", "pattern", i))
        else:
            points.append((f"blocks.{n_layers - 1}.hook_resid_post", "resid", i))
    p = next(bridge.parameters())
    out = {
        "resid": p.new_empty(len(captured), len(ids), int(bridge.cfg.d_model)),
        "pattern": p.new_empty(len(pattern_layers), int(bridge.cfg.n_heads), len(ids), len(ids)),
    }
    fired: set[str] = set()

    def make_hook(name: str, kind: str, i: int):
        def hook(tensor: Tensor, *, hook) -> Tensor:
            out[kind][i].copy_(tensor[0])
            fired.add(name)
            if name == points[-1][0]:
                raise _Stop
            return tensor

        return hook

    def release(block: int):
        def hook(tensor: Tensor, *, hook) -> Tensor:
            _release_retained_pattern(bridge, block)
            return tensor

        return hook

    fwd_hooks = [(name, make_hook(name, kind, i)) for name, kind, i in points]
    # At every block's start, drop what the previous block's attention kept (see below).
    last_block = min(captured[-1], n_layers - 1)
    fwd_hooks += [(f"blocks.{l}.hook_resid_pre", release(l - 1)) for l in range(1, last_block + 1)]
    with torch.no_grad():
        try:
            with bridge.hooks(fwd_hooks=fwd_hooks):
                bridge(ids.to(p.device)[None], return_type=None)
        except _Stop:
            pass
        finally:
            for l in range(n_layers):
                _release_retained_pattern(bridge, l)
    missing = [name for name, _, _ in points if name not in fired]
    if missing:
        raise RuntimeError(f"hooks {missing} did not fire on {model.name!r}; no trace made.")

    weights = model.attention_weights(iterations)
    if len(pattern_layers) < n_layers:
        if model.shares_layers:  # every block holds the same weights: keep the view
            weights = {k: w[: len(pattern_layers)] for k, w in weights.items()}
        else:
            index = torch.tensor(pattern_layers, dtype=torch.long, device=p.device)
            weights = {k: w.index_select(0, index) for k, w in weights.items()}
    return Trace(
        tokens=_token_strings(model, ids),
        token_ids=ids,
        causal=model.causal,
        model_name=model.name,
        n_layers=n_layers,
        layers=captured,
        pattern_layers=pattern_layers,
        resid=out["resid"],
        pattern=out["pattern"],
        **weights,
    )


def _release_retained_pattern(bridge, block: int) -> None:
    """Drop the attention pattern TransformerLens' fused-QKV attention (GPT-2) keeps on itself.

    It stores each forward's pattern as `attn._pattern` until the next forward, so without
    this every layer's pattern stays alive beside the trace's copy: for gpt2-xl at 1024 tokens,
    48 x 25 x 1024^2 floats, 5 GB. Released as soon as the next block starts.
    """
    attn = bridge.blocks[block].attn
    if getattr(attn, "_pattern", None) is not None:
        attn._pattern = None


def _token_ids(model: Model, source) -> Tensor:
    if isinstance(source, str):
        if not source.strip():
            raise ValueError("text to trace is empty; expected a non-empty string or token ids.")
        if model.tokenizer is None:
            raise ValueError(
                f"model {model.name!r} has no tokenizer; pass token ids instead of text."
            )
        ids = torch.tensor(model.tokenizer(source)["input_ids"], dtype=torch.long)
        what = "text"
    else:
        ids = torch.as_tensor(source)
        if ids.ndim == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.numel() == 0:
            raise ValueError("token ids to trace are empty; expected at least one token.")
        if ids.ndim != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(
                "token ids must be one sequence of ints (shape [n] or [1, n]), got "
                f"dtype {ids.dtype} and shape {tuple(ids.shape)}."
            )
        ids = ids.long().cpu()
        what = "token ids"
        bad = (ids < 0) | (ids >= model.d_vocab)
        if bad.any():
            raise ValueError(
                f"token ids must lie in [0, {model.d_vocab}) for {model.name!r}; "
                f"got {ids[bad][:5].tolist()}."
            )
    if len(ids) > model.n_ctx:
        raise ValueError(
            f"{what} is {len(ids)} tokens long, but {model.name!r} takes at most "
            f"{model.n_ctx}; truncate it (e.g. ids[:{model.n_ctx}])."
        )
    return ids


def _layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers + 1))
    wanted = sorted({int(l) for l in layers})
    if not wanted or wanted[0] < 0 or wanted[-1] > n_layers:
        raise ValueError(
            f"layers must be residual indices in 0..{n_layers} (block inputs and the output "
            f"of the last block), got {list(layers)!r}."
        )
    return wanted


def _token_strings(model: Model, ids: Tensor) -> list[str]:
    if model.tokenizer is None:
        return [str(i) for i in ids.tolist()]
    return model.tokenizer.convert_ids_to_tokens(ids.tolist())
