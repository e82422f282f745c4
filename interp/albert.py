"""TransformerBridge over ALBERT, with the shared layer unrolled into one block per application.

ALBERT's encoder is a single ``AlbertLayer`` applied ``num_hidden_layers`` times. TransformerLens
has no ALBERT adapter, and its block machinery assumes one module per block: wrapping the one
shared layer would make every block hook fire N times per forward and a cache would keep only the
last application. So before wrapping, the encoder is replaced by an unrolled one holding
``iterations`` *shell* modules. Each shell is a structural copy of the shared layer whose
``nn.Parameter`` objects are the very same objects as the shared layer's (deepcopy with a memo that
maps every parameter to itself). That gives each application its own module for the bridge to hook
(``blocks.{i}.*`` means "the i-th application"), while there is still exactly one set of weights:
``bridge.W_Q[i]`` is the shared query weight for every ``i``, an in-place edit of the HF parameter is
visible in every block, and gradients from every block accumulate into the one shared tensor.
``iterations`` is free: it can be the trained depth, fewer (early exit) or more (run the layer
past its trained depth).

Why not materialise the unrolled model and save or reload it as an ordinary N-layer model: its
``state_dict`` would repeat the shared weights once per block (60 copies for a 60-step unroll), the
copies would silently stop being tied the moment any of them is edited or trained, and none of it
would load back into ``AlbertForMaskedLM``. The unrolled form is a view built on demand from the
original model, and it is cheap to build because no weight is copied.

The bridge rewrites the modules it wraps in place, so the wrapping is done on a copy of the
caller's model (sharing parameters, copying only module structure and small buffers). The caller's
``hf_model`` keeps its structure and forward, and several bridges with different ``iterations``
can coexist over the one set of weights.

Component mapping follows TransformerLens' BERT adapter (ALBERT's layer is a BERT layer with
different attribute names): post-LN, ``ln1`` = ``attention.LayerNorm`` (the norm closing the
attention sublayer), ``ln2`` = ``full_layer_layer_norm`` (closing the MLP sublayer). The factorised
embedding is exposed as ``embed`` (``W_E`` is ``[vocab, embedding_size]``), ``pos_embed``,
``token_type_embed``, ``embed_ln`` (all in embedding space) and ``embed_proj``, the
``embedding_hidden_mapping_in`` projection into ``d_model`` whose output is
``blocks.0.hook_resid_pre``. The MLM head (when present) is ``mlm_head`` (dense) → ``ln_final`` →
``unembed``; ``ln_final`` and ``W_U`` live in embedding space, not ``d_model``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from transformer_lens.conversion_utils.conversion_steps import RearrangeTensorConversion
from transformer_lens.conversion_utils.param_processing_conversion import (
    ParamProcessingConversion,
)
from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
from transformer_lens.model_bridge.generalized_components import (
    AttentionBridge,
    BlockBridge,
    EmbeddingBridge,
    LinearBridge,
    MLPBridge,
    NormalizationBridge,
    PosEmbedBridge,
    UnembeddingBridge,
)
from transformer_lens.model_bridge.sources import build_bridge_from_module

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

# Registered under a private name, not "AlbertForMaskedLM": the adapter only fits the unrolled
# copy built here, so claiming the HF name would make `boot_transformers("albert-base-v2")` pick it
# for a stock model whose encoder has no `layer` list.
ARCHITECTURE_NAME = "InterpUnrolledAlbert"


class UnrolledAlbertEncoder(nn.Module):
    """Drop-in for ``AlbertTransformer`` that applies ``layer[0], layer[1], ...`` in turn.

    Each entry of ``layer`` is a shell of the shared ``AlbertLayer`` (same Parameters), so the
    output equals ALBERT's own loop run for ``len(layer)`` steps.
    """

    def __init__(self, embedding_hidden_mapping_in: nn.Linear, layers: list[nn.Module]):
        super().__init__()
        self.embedding_hidden_mapping_in = embedding_hidden_mapping_in
        self.layer = nn.ModuleList(layers)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutput:
        hidden_states = self.embedding_hidden_mapping_in(hidden_states)
        for layer in self.layer:
            # attention_mask goes by keyword: BlockBridge treats a lone positional tensor as a
            # standalone call and would hand back a tuple instead of the tensor AlbertLayer returns.
            out = layer(hidden_states, attention_mask=attention_mask, **kwargs)
            hidden_states = out[0] if isinstance(out, tuple) else out
        return BaseModelOutput(last_hidden_state=hidden_states)


class UnrolledAlbertArchitectureAdapter(ArchitectureAdapter):
    """Adapter for an ALBERT model whose encoder was replaced by ``UnrolledAlbertEncoder``."""

    supports_generation: bool = False

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.cfg.normalization_type = "LN"
        self.cfg.positional_embedding_type = "standard"
        self.cfg.final_rms = False
        self.cfg.gated_mlp = False
        self.cfg.attn_only = False
        # Encoder self-attention sees every position, so right padding must be masked.
        self.cfg.attention_dir = "bidirectional"
        # Post-LN: ln1 closes the attention sublayer and its output feeds the MLP, ln2 feeds the
        # next block's attention; folding them as if pre-LN would put them in the wrong sublayer.
        # Folding would also write into weights every block shares.
        self.supports_fold_ln = False

        n_heads = self.cfg.n_heads
        qkv = RearrangeTensorConversion("(h d_head) d_model -> h d_model d_head", h=n_heads)
        qkv_bias = RearrangeTensorConversion("(h d_head) -> h d_head", h=n_heads)
        self.weight_processing_conversions = {
            "blocks.{i}.attn.q.weight": ParamProcessingConversion(tensor_conversion=qkv),
            "blocks.{i}.attn.k.weight": ParamProcessingConversion(tensor_conversion=qkv),
            "blocks.{i}.attn.v.weight": ParamProcessingConversion(tensor_conversion=qkv),
            "blocks.{i}.attn.q.bias": ParamProcessingConversion(tensor_conversion=qkv_bias),
            "blocks.{i}.attn.k.bias": ParamProcessingConversion(tensor_conversion=qkv_bias),
            "blocks.{i}.attn.v.bias": ParamProcessingConversion(tensor_conversion=qkv_bias),
            "blocks.{i}.attn.o.weight": ParamProcessingConversion(
                tensor_conversion=RearrangeTensorConversion(
                    "d_model (h d_head) -> h d_head d_model", h=n_heads
                )
            ),
        }
        # Built in prepare_model: module paths depend on whether the model is AlbertModel
        # (no prefix, no head) or AlbertForMaskedLM ("albert." prefix, MLM head).
        self.component_mapping = {}

    def prepare_model(self, hf_model: Any) -> None:
        base = "albert." if hasattr(hf_model, "albert") else ""
        mapping: dict[str, Any] = {
            "embed": EmbeddingBridge(name=f"{base}embeddings.word_embeddings"),
            "token_type_embed": EmbeddingBridge(name=f"{base}embeddings.token_type_embeddings"),
            "pos_embed": PosEmbedBridge(name=f"{base}embeddings.position_embeddings"),
            "embed_ln": NormalizationBridge(
                name=f"{base}embeddings.LayerNorm",
                config=self.cfg,
                use_native_layernorm_autograd=True,
            ),
            "embed_proj": LinearBridge(name=f"{base}encoder.embedding_hidden_mapping_in"),
            "blocks": BlockBridge(
                name=f"{base}encoder.layer",
                # No single MLP module (ffn and ffn_output are siblings in AlbertLayer), so the
                # MLPBridge forward never runs; point the MLP hooks at the linears that do.
                hook_alias_overrides={
                    "hook_mlp_out": "mlp.out.hook_out",
                    "hook_mlp_in": "mlp.in.hook_in",
                },
                submodules={
                    "ln1": NormalizationBridge(
                        name="attention.LayerNorm",
                        config=self.cfg,
                        use_native_layernorm_autograd=True,
                    ),
                    "ln2": NormalizationBridge(
                        name="full_layer_layer_norm",
                        config=self.cfg,
                        use_native_layernorm_autograd=True,
                    ),
                    "attn": AttentionBridge(
                        name="attention",
                        config=self.cfg,
                        is_causal=False,
                        submodules={
                            "q": LinearBridge(name="query"),
                            "k": LinearBridge(name="key"),
                            "v": LinearBridge(name="value"),
                            "o": LinearBridge(name="dense"),
                        },
                    ),
                    "mlp": MLPBridge(
                        name=None,
                        config=self.cfg,
                        submodules={
                            "in": LinearBridge(name="ffn"),
                            "out": LinearBridge(name="ffn_output"),
                        },
                    ),
                },
            ),
        }
        if hasattr(hf_model, "predictions"):
            mapping["mlm_head"] = LinearBridge(name="predictions.dense")
            mapping["ln_final"] = NormalizationBridge(
                name="predictions.LayerNorm",
                config=self.cfg,
                use_native_layernorm_autograd=True,
            )
            mapping["unembed"] = UnembeddingBridge(name="predictions.decoder")
        self.component_mapping = mapping


ArchitectureAdapterFactory.register_adapter(ARCHITECTURE_NAME, UnrolledAlbertArchitectureAdapter)


def _shared_memo(module: nn.Module) -> dict[int, Any]:
    """deepcopy memo under which every parameter of ``module`` copies to itself."""
    return {id(p): p for p in module.parameters()}


def albert_bridge(hf_model, tokenizer, iterations: int) -> "TransformerBridge":
    """TransformerBridge over an HF ALBERT model (AlbertForMaskedLM or AlbertModel) that sees
    each of `iterations` applications of the shared layer as its own block."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    cfg = hf_model.config
    if cfg.num_hidden_groups != 1 or cfg.inner_group_num != 1:
        # Several groups or inner layers would make "the" shared layer ambiguous.
        raise NotImplementedError(
            "albert_bridge supports num_hidden_groups == inner_group_num == 1 "
            f"(got {cfg.num_hidden_groups}, {cfg.inner_group_num})"
        )

    # Structure is copied, parameters are not: every Parameter maps to itself. Buffers
    # (position/token-type ids) are copied; they are tiny and the bridge may patch them.
    model = copy.deepcopy(hf_model, memo=_shared_memo(hf_model))
    # Patterns are read from the attention weights the HF module returns; only eager attention
    # materialises them. The copy has its own config, so the caller's choice is untouched.
    model.config._attn_implementation = "eager"
    # The bridge config takes n_layers from here; for the unrolled copy it is the block count.
    model.config.num_hidden_layers = iterations

    copy_base = model.albert if hasattr(model, "albert") else model
    shared = copy_base.encoder.albert_layer_groups[0].albert_layers[0]
    # Shells also share the copy's config object rather than carrying one config copy each.
    shells = [
        copy.deepcopy(shared, memo={**_shared_memo(shared), id(model.config): model.config})
        for _ in range(iterations)
    ]
    copy_base.encoder = UnrolledAlbertEncoder(
        copy_base.encoder.embedding_hidden_mapping_in, shells
    )

    return build_bridge_from_module(
        model,
        ARCHITECTURE_NAME,
        hf_config=model.config,
        tokenizer=tokenizer,
        model_name=getattr(cfg, "name_or_path", "") or "albert",
    )
