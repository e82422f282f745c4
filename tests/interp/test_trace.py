"""`interp.trace` agrees with Hugging Face's own outputs, family by family.

The reference is an independently loaded HF base model (eager attention) run with
`output_hidden_states` and `output_attentions`. Tolerance 1e-5 in float32.
"""

from __future__ import annotations

import einops
import pytest
import torch
from transformers import AutoModel

import interp

TEXT = "the cat sat on the mat and looked at the sphere of tokens"
ATOL = 1e-5


def _reference(source):
    return AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()


def _hf_outputs(ref, ids):
    with torch.no_grad():
        out = ref(ids[None], output_hidden_states=True, output_attentions=True)
    return [h[0] for h in out.hidden_states], [a[0] for a in out.attentions]


def _hf_qkvo(ref, family: str, n_heads: int):
    """HF attention weights rearranged to [layer, head, d_model, d_head] / [layer, head, d_head, d_model]."""
    split_in = "d_model (h d_head) -> h d_model d_head"
    split_out = "(h d_head) d_model -> h d_head d_model"
    per_layer = []
    if family == "gpt2":  # Conv1D: y = x @ W, W [d_model, 3 d_model] holding q | k | v
        for block in ref.h:
            q, k, v = block.attn.c_attn.weight.chunk(3, dim=1)
            o = block.attn.c_proj.weight
            per_layer.append((q, k, v, o))
    else:  # nn.Linear: y = x @ W.T
        if family == "bert":
            attns = [(l.attention.self, l.attention.output.dense) for l in ref.encoder.layer]
        else:
            shared = ref.encoder.albert_layer_groups[0].albert_layers[0].attention
            attns = [(shared, shared.dense)] * ref.config.num_hidden_layers
        for self_attn, dense in attns:
            per_layer.append((self_attn.query.weight.T, self_attn.key.weight.T,
                              self_attn.value.weight.T, dense.weight.T))
    q, k, v, o = zip(*per_layer)
    rin = lambda ws: torch.stack([einops.rearrange(w, split_in, h=n_heads) for w in ws])
    rout = lambda ws: torch.stack([einops.rearrange(w, split_out, h=n_heads) for w in ws])
    return {"W_Q": rin(q), "W_K": rin(k), "W_V": rin(v), "W_O": rout(o)}


@pytest.fixture(scope="module")
def sources(checkpoint_dirs):
    return {**checkpoint_dirs, "minilm": interp.models._minilm_dir()}


@pytest.mark.parametrize("family", ["gpt2", "bert", "albert", "minilm"])
def test_trace_matches_hf_hidden_states_attentions_and_weights(sources, family):
    model = interp.load(sources[family] if family != "minilm" else "minilm")
    ref = _reference(sources[family])
    tr = interp.trace(model, TEXT)
    hidden, attentions = _hf_outputs(ref, tr.token_ids)

    L = ref.config.num_hidden_layers
    assert tr.layers == list(range(L + 1)) and tr.pattern_layers == list(range(L))
    assert tr.resid.shape == (L + 1, len(tr.tokens), ref.config.hidden_size)
    if family == "gpt2":
        # HF applies ln_f to its last hidden state; the trace stops before any final norm.
        torch.testing.assert_close(tr.resid[:L], torch.stack(hidden[:L]), atol=ATOL, rtol=0)
        torch.testing.assert_close(ref.ln_f(tr.resid[L]), hidden[L], atol=ATOL, rtol=0)
        assert not torch.allclose(tr.resid[L], hidden[L], atol=1e-2)
    else:
        torch.testing.assert_close(tr.resid, torch.stack(hidden), atol=ATOL, rtol=0)
    torch.testing.assert_close(tr.pattern, torch.stack(attentions), atol=ATOL, rtol=0)
    torch.testing.assert_close(tr.pattern.sum(-1), torch.ones(tr.pattern.shape[:-1]),
                               atol=ATOL, rtol=0)
    expected = _hf_qkvo(ref, "albert" if family == "albert" else
                        ("gpt2" if family == "gpt2" else "bert"), model.n_heads)
    for name, w in expected.items():
        torch.testing.assert_close(getattr(tr, name), w, atol=0, rtol=0, msg=name)
    assert tr.tokens == model.tokenizer.convert_ids_to_tokens(tr.token_ids.tolist())
    assert len(tr.tokens) >= 12 and "[UNK]" not in tr.tokens


def test_causal_flag_and_masks(checkpoint_dirs):
    for family, causal in [("gpt2", True), ("bert", False), ("albert", False)]:
        tr = interp.trace(interp.load(checkpoint_dirs[family]), TEXT)
        assert tr.causal is causal
        n = len(tr.tokens)
        upper = tr.pattern[..., *torch.triu_indices(n, n, offset=1)]
        if causal:
            assert torch.count_nonzero(upper) == 0
        else:
            assert (upper > 0).all()


def test_albert_iterations_beyond_depth_equal_repeated_shared_layer(albert_dir):
    model = interp.load(albert_dir)
    ref = _reference(albert_dir)
    k = 2 * ref.config.num_hidden_layers + 1
    tr = interp.trace(model, TEXT, iterations=k)
    assert tr.n_layers == k and tr.resid.shape[0] == k + 1 and tr.pattern.shape[0] == k

    shared = ref.encoder.albert_layer_groups[0].albert_layers[0]
    with torch.no_grad():
        h = ref.encoder.embedding_hidden_mapping_in(ref.embeddings(tr.token_ids[None]))
        resid, patterns = [h[0]], []
        for _ in range(k):
            patterns.append(shared.attention(h)[1][0])
            h = shared(h)
            resid.append(h[0])
    torch.testing.assert_close(tr.resid, torch.stack(resid), atol=ATOL, rtol=0)
    torch.testing.assert_close(tr.pattern, torch.stack(patterns), atol=ATOL, rtol=0)
    # The trained depth is the prefix of a longer run.
    short = interp.trace(model, TEXT)
    torch.testing.assert_close(short.resid, tr.resid[: ref.config.num_hidden_layers + 1],
                               atol=0, rtol=0)
    # One shared weight set, expanded over iterations rather than copied.
    assert tr.W_Q.shape[0] == k and tr.W_Q.stride(0) == 0


def test_layers_restricts_capture_and_stops_the_forward_early(gpt2_dir):
    model = interp.load(gpt2_dir)
    full = interp.trace(model, TEXT)
    ran = []
    handles = [b.register_forward_hook(lambda *_, i=i: ran.append(i))
               for i, b in enumerate(model.bridge.blocks)]
    try:
        part = interp.trace(model, TEXT, layers=[1, 0])
    finally:
        for h in handles:
            h.remove()
    assert part.layers == [0, 1] and part.pattern_layers == [0, 1]
    torch.testing.assert_close(part.resid, full.resid[:2], atol=0, rtol=0)
    torch.testing.assert_close(part.pattern, full.pattern[:2], atol=0, rtol=0)
    torch.testing.assert_close(part.W_V, full.W_V[:2], atol=0, rtol=0)
    assert 2 not in ran  # block 2 never ran: nothing after the last requested hook

    last = interp.trace(model, TEXT, layers=[model.n_layers])
    assert last.pattern_layers == [] and last.pattern.shape[0] == 0
    torch.testing.assert_close(last.resid[0], full.resid[-1], atol=0, rtol=0)


def test_token_ids_in_any_accepted_form_give_the_same_trace(gpt2_dir):
    model = interp.load(gpt2_dir)
    tr = interp.trace(model, TEXT)
    for ids in (tr.token_ids.tolist(), tr.token_ids, tr.token_ids[None]):
        again = interp.trace(model, ids)
        torch.testing.assert_close(again.resid, tr.resid, atol=0, rtol=0)
        assert again.tokens == tr.tokens


@pytest.mark.parametrize(
    "source, kwargs, match",
    [
        ("", {}, "empty"),
        ("   ", {}, "empty"),
        ([], {}, "empty"),
        ("word " * 200, {}, "at most 64"),
        (list(range(65)), {}, "65 tokens long.*at most 64"),
        ([1, 2, 10**6], {}, r"\[0, 300\)"),
        ([[1, 2], [3, 4]], {}, "one sequence"),
        ([0.5, 1.5], {}, "one sequence of ints"),
        (TEXT, {"iterations": 5}, "does not share|each have their own parameters"),
        (TEXT, {"layers": [4]}, r"0\.\.3"),
        (TEXT, {"layers": []}, r"0\.\.3"),
    ],
)
def test_bad_trace_input_gets_one_clear_error(gpt2_dir, source, kwargs, match):
    model = interp.load(gpt2_dir)
    with pytest.raises(ValueError, match=match):
        interp.trace(model, source, **kwargs)


def test_bad_iterations_on_albert(albert_dir):
    model = interp.load(albert_dir)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="iterations must be a positive int"):
            interp.trace(model, TEXT, iterations=bad)


def _fresh(model, name):
    return torch.stack([getattr(b.attn, name).detach() for b in model.bridge.blocks])


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_weights_are_stacked_once_and_a_callers_edit_does_not_leak(checkpoint_dirs, family):
    model = interp.load(checkpoint_dirs[family])
    first, second = interp.trace(model, TEXT), interp.trace(model, TEXT)
    assert first.W_Q is second.W_Q  # reused, not restacked per sequence
    second.W_K.zero_()
    torch.testing.assert_close(interp.trace(model, TEXT).W_K, _fresh(model, "W_K"),
                               atol=0, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "bert", "albert"])
def test_an_in_place_edit_of_the_model_reaches_weights_and_patterns(checkpoint_dirs, family):
    model = interp.load(checkpoint_dirs[family])
    before = interp.trace(model, TEXT)
    with torch.no_grad():  # as an intervention would: scale block 1's queries
        model.bridge.blocks[1].attn.q.weight.mul_(3.0)
    after = interp.trace(model, TEXT)
    torch.testing.assert_close(after.W_Q, _fresh(model, "W_Q"), atol=0, rtol=0)
    torch.testing.assert_close(after.W_Q[1], 3.0 * before.W_Q[1], atol=1e-6, rtol=0)
    assert not torch.allclose(after.pattern[1], before.pattern[1], atol=1e-4)
    if family != "albert":  # ALBERT's blocks share the edited weight; others keep block 0
        torch.testing.assert_close(after.pattern[0], before.pattern[0], atol=0, rtol=0)


def test_no_attention_pattern_outlives_the_trace_inside_the_model(gpt2_dir):
    # TransformerLens' fused-QKV attention keeps each forward's pattern on the module; a
    # trace must not leave a copy of every layer's attention behind in the model.
    model = interp.load(gpt2_dir)
    seen = []
    handle = model.bridge.blocks[2].register_forward_pre_hook(
        lambda *_: seen.append([getattr(b.attn, "_pattern", None) is not None
                                for b in model.bridge.blocks]))
    try:
        interp.trace(model, TEXT)
        interp.trace(model, TEXT, layers=[3])  # capturing only the end releases them too
    finally:
        handle.remove()
    assert seen == [[False, True, False]] * 2  # while block 2 runs, only block 1's is held
    assert all(getattr(b.attn, "_pattern", None) is None for b in model.bridge.blocks)
