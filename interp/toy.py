"""Small transformers trained by this toolkit, native to TransformerLens, stored without pickle.

A toy is a `TransformerBridge.boot_native` model, so the hooks `interp.trace` reads (and the
interventions later issues add) are the same as on a pretrained GPT-2. On disk it is a
directory with `toy_config.json` (the `ToyConfig` fields plus a format tag) and
`model.safetensors` (the bridge's state dict); `interp.load(directory)` reads it back.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

CONFIG_FILE = "toy_config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "interp-toy/1"


@dataclass(frozen=True)
class ToyConfig:
    """Architecture of a toy transformer."""

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    n_ctx: int
    d_vocab: int
    causal: bool = True
    act_fn: str = "relu"
    # "LN" for LayerNorm before each sublayer and at the end; None for no normalisation.
    normalization: str | None = "LN"

    def __post_init__(self) -> None:
        for f in ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "n_ctx", "d_vocab"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ToyConfig.{f} must be a positive int, got {value!r}.")
        if self.normalization not in ("LN", None):
            raise ValueError(
                f"ToyConfig.normalization must be 'LN' or None, got {self.normalization!r}."
            )


def build(cfg: ToyConfig, *, seed: int = 0, device=None, dtype=None):
    """A freshly initialised bridge for `cfg`; the same seed gives the same weights."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    tl_cfg = TransformerBridgeConfig(
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        d_model=cfg.d_model,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp,
        n_ctx=cfg.n_ctx,
        d_vocab=cfg.d_vocab,
        act_fn=cfg.act_fn,
        normalization_type=cfg.normalization,
        attention_dir="causal" if cfg.causal else "bidirectional",
        seed=seed,
    )
    bridge = TransformerBridge.boot_native(tl_cfg, device=device, dtype=dtype)
    return bridge.eval()


def save_toy(bridge, cfg: ToyConfig, directory: str | Path) -> Path:
    """Write `cfg` and the bridge's weights to `directory`, all or nothing.

    Files are written under a temporary directory beside the target and renamed into place, so
    an interrupted save never leaves a directory that `interp.load` would take as complete.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"save_toy target {str(directory)!r} exists and is not empty.")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    state = {k: v.detach().contiguous().cpu() for k, v in bridge.state_dict().items()}
    save_file(state, tmp / WEIGHTS_FILE)
    (tmp / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, **asdict(cfg)}, indent=2))
    if directory.exists():
        directory.rmdir()
    os.replace(tmp, directory)
    return directory


def is_toy_dir(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def read_config(path: Path) -> ToyConfig:
    raw = json.loads((Path(path) / CONFIG_FILE).read_text())
    if raw.pop("format", None) != FORMAT:
        raise ValueError(f"{str(path)!r}/{CONFIG_FILE} is not a {FORMAT} toy config.")
    known = {f.name for f in fields(ToyConfig)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{str(path)!r}/{CONFIG_FILE} has unknown fields {sorted(unknown)}.")
    return ToyConfig(**raw)


def load_weights(bridge, path: Path) -> None:
    from safetensors.torch import load_file

    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"toy directory {str(path)!r} has {CONFIG_FILE} but no {WEIGHTS_FILE}.")
    device = next(bridge.parameters()).device
    state = load_file(weights, device=str(device))
    dtype = next(bridge.parameters()).dtype
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    bridge.load_state_dict(state, strict=True)
