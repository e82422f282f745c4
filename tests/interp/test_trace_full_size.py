"""Parity at full model sizes and context lengths.

The same checks as test_trace.py, on a GPT-2-small-shaped and ALBERT-shaped random checkpoints
(written to disk, loaded by path) and on MiniLM at its full 512-token context. The
albert-xlarge-v2 shape iterated 60 times at 512 tokens is the slow tier (`pytest -m slow`).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AlbertConfig, AlbertForMaskedLM, AutoModel, GPT2Config, GPT2LMHeadModel

import interp

ATOL = 1e-5


def _ids(n: int, vocab: int) -> torch.Tensor:
    return torch.randint(1000, vocab - 1000, (n,), generator=torch.Generator().manual_seed(0))


def test_gpt2_small_shape_at_450_tokens(tmp_path):
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(tmp_path)
    tr = interp.trace(interp.load(tmp_path), _ids(450, 50257))
    ref = AutoModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        out = ref(tr.token_ids[None], output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(tr.resid[:-1], torch.cat(out.hidden_states[:-1]), atol=ATOL, rtol=0)
    torch.testing.assert_close(ref.ln_f(tr.resid[-1]), out.hidden_states[-1][0], atol=ATOL, rtol=0)
    torch.testing.assert_close(tr.pattern, torch.cat(out.attentions), atol=ATOL, rtol=0)


ALBERT_SHAPES = {
    "base": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "xlarge": dict(hidden_size=2048, num_attention_heads=16, intermediate_size=8192),
}


@pytest.mark.parametrize("shape, n", [("base", 128),
                                      pytest.param("xlarge", 512, marks=pytest.mark.slow)])
def test_albert_shape_iterated_60_times(tmp_path, shape, n):
    torch.manual_seed(0)
    AlbertForMaskedLM(AlbertConfig(**ALBERT_SHAPES[shape])).save_pretrained(tmp_path)
    model = interp.load(tmp_path)
    tr = interp.trace(model, _ids(n, 30000), iterations=60)
    ref = AutoModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    layer = ref.encoder.albert_layer_groups[0].albert_layers[0]
    with torch.no_grad():
        h = ref.encoder.embedding_hidden_mapping_in(ref.embeddings(tr.token_ids[None]))
        resid, patterns = [h[0]], []
        for _ in range(60):
            patterns.append(layer.attention(h)[1][0])
            h = layer(h)
            resid.append(h[0])
    d, h = model.d_model, model.n_heads
    assert tr.resid.shape == (61, n, d) and tr.pattern.shape == (60, h, n, n)
    torch.testing.assert_close(tr.resid, torch.stack(resid), atol=ATOL, rtol=0)
    torch.testing.assert_close(tr.pattern, torch.stack(patterns), atol=ATOL, rtol=0)
    # Sixty blocks, one set of weights: as many parameters as the HF model itself.
    full = AlbertForMaskedLM.from_pretrained(tmp_path)
    count = lambda m: sum(p.numel() for p in m.parameters())  # parameters() deduplicates
    assert count(model.bridge_for(60)) == count(full)


def test_minilm_at_its_full_512_token_context():
    model = interp.load("minilm")
    tr = interp.trace(model, _ids(512, model.d_vocab))
    ref = AutoModel.from_pretrained(str(interp.models._minilm_dir()),
                                    attn_implementation="eager").eval()
    with torch.no_grad():
        out = ref(tr.token_ids[None], output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(tr.resid, torch.cat(out.hidden_states), atol=ATOL, rtol=0)
    torch.testing.assert_close(tr.pattern, torch.cat(out.attentions), atol=ATOL, rtol=0)
