"""albert_bridge: unrolled ALBERT blocks match HF ALBERT exactly and stay tied to its weights."""

import pytest
import torch
from transformers import AlbertConfig, AlbertForMaskedLM, AlbertModel
from transformers.models.albert.modeling_albert import AlbertTransformer

from interp.albert import albert_bridge

ATOL = 1e-5
DEPTH = 3
N_HEADS = 4
D_HEAD = 8
IDS = torch.tensor([[2, 17, 45, 8, 91, 3], [2, 60, 5, 33, 3, 0]])


def _config() -> AlbertConfig:
    return AlbertConfig(
        vocab_size=100,
        embedding_size=16,
        hidden_size=N_HEADS * D_HEAD,
        num_attention_heads=N_HEADS,
        intermediate_size=64,
        num_hidden_layers=DEPTH,
        max_position_embeddings=64,
        attn_implementation="eager",
    )


@pytest.fixture(scope="module")
def hf_model() -> AlbertForMaskedLM:
    torch.manual_seed(0)
    return AlbertForMaskedLM(_config()).eval()


def _shared_layer(model):
    base = model.albert if hasattr(model, "albert") else model
    return base.encoder.albert_layer_groups[0].albert_layers[0]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def _bridge_run(bridge, n_blocks: int):
    """Residual stream at every block boundary (n_blocks + 1 tensors) and every block's pattern."""
    _, cache = bridge.run_with_cache(
        IDS,
        names_filter=lambda name: name.endswith(("hook_resid_pre", "hook_resid_post", "hook_pattern")),
    )
    resid = [cache[f"blocks.{i}.hook_resid_pre"] for i in range(n_blocks)]
    resid.append(cache[f"blocks.{n_blocks - 1}.hook_resid_post"])
    patterns = [cache[f"blocks.{i}.attn.hook_pattern"] for i in range(n_blocks)]
    return resid, patterns


@torch.no_grad()
def _reference_loop(model, n_steps: int):
    """ALBERT's own computation run for n_steps, on the untouched HF modules.

    The mask is None: for an unpadded batch under eager attention, AlbertModel's
    create_bidirectional_mask returns None, with or without an all-ones attention_mask.
    """
    base = model.albert if hasattr(model, "albert") else model
    layer = _shared_layer(model)
    h = base.encoder.embedding_hidden_mapping_in(base.embeddings(IDS))
    resid, patterns = [h], []
    for _ in range(n_steps):
        _, weights = layer.attention(h, None)
        patterns.append(weights)
        h = layer(h, None)
        resid.append(h)
    return resid, patterns


@torch.no_grad()
def test_trained_depth_matches_hf_outputs(hf_model):
    bridge = albert_bridge(hf_model, None, DEPTH)
    assert len(bridge.blocks) == DEPTH
    assert bridge.cfg.n_layers == DEPTH
    assert bridge.cfg.attention_dir == "bidirectional"

    out = hf_model(IDS, output_hidden_states=True, output_attentions=True)
    resid, patterns = _bridge_run(bridge, DEPTH)
    assert len(out.hidden_states) == DEPTH + 1
    for i, (ours, theirs) in enumerate(zip(resid, out.hidden_states)):
        assert _max_diff(ours, theirs) < ATOL, f"residual {i}"
    for i, (ours, theirs) in enumerate(zip(patterns, out.attentions)):
        assert ours.shape == (2, N_HEADS, IDS.shape[1], IDS.shape[1])
        assert _max_diff(ours, theirs) < ATOL, f"pattern {i}"
    assert _max_diff(bridge(IDS), out.logits) < ATOL


@torch.no_grad()
def test_beyond_trained_depth_matches_reference_loop(hf_model):
    steps = 7
    bridge = albert_bridge(hf_model, None, steps)
    assert len(bridge.blocks) == steps
    assert bridge.cfg.n_layers == steps

    ref_resid, ref_patterns = _reference_loop(hf_model, steps)
    resid, patterns = _bridge_run(bridge, steps)
    for i, (ours, theirs) in enumerate(zip(resid, ref_resid)):
        assert _max_diff(ours, theirs) < ATOL, f"residual {i}"
    for i, (ours, theirs) in enumerate(zip(patterns, ref_patterns)):
        assert _max_diff(ours, theirs) < ATOL, f"pattern {i}"


@torch.no_grad()
def test_weights_are_the_shared_parameters(hf_model):
    steps = 7
    bridge = albert_bridge(hf_model, None, steps)
    attn = _shared_layer(hf_model).attention

    def heads_in(weight):  # nn.Linear [H*d_head, d_model] -> [H, d_model, d_head]
        return weight.T.reshape(-1, N_HEADS, D_HEAD).permute(1, 0, 2)

    def heads_out(weight):  # nn.Linear [d_model, H*d_head] -> [H, d_head, d_model]
        return weight.T.reshape(N_HEADS, D_HEAD, -1)

    for name, ours, hf_weight, rearrange in (
        ("W_Q", bridge.W_Q, attn.query.weight, heads_in),
        ("W_K", bridge.W_K, attn.key.weight, heads_in),
        ("W_V", bridge.W_V, attn.value.weight, heads_in),
        ("W_O", bridge.W_O, attn.dense.weight, heads_out),
    ):
        assert ours.shape[0] == steps, name
        for block in range(steps):
            assert torch.equal(ours[block], rearrange(hf_weight)), f"{name}[{block}]"
    # Spot-check the rearrangement against the spec'd slice, not just our own reshape.
    assert torch.equal(bridge.W_Q[2, 1], attn.query.weight.T[:, D_HEAD : 2 * D_HEAD])

    before_hidden = hf_model(IDS, output_hidden_states=True).hidden_states
    before_resid, _ = _bridge_run(bridge, steps)
    saved = attn.query.weight.detach().clone()
    try:
        attn.query.weight.add_(1.0)
        assert torch.equal(bridge.blocks[5].attn.W_Q, heads_in(attn.query.weight))
        assert not torch.equal(bridge.blocks[5].attn.W_Q, heads_in(saved))
        # The edit reaches the bridge's forward, not just its weight accessors. (Adding a
        # constant barely moves the forward: it shifts every query by the sum of a LayerNorm
        # output, which is ~0 here. Scaling sharpens every attention pattern.)
        attn.query.weight.mul_(5.0)
        edited_resid, _ = _bridge_run(bridge, steps)
        assert _max_diff(edited_resid[-1], before_resid[-1]) > 1e-3
    finally:
        attn.query.weight.copy_(saved)

    after_hidden = hf_model(IDS, output_hidden_states=True).hidden_states
    for ours, theirs in zip(after_hidden, before_hidden):
        assert torch.equal(ours, theirs)


@torch.no_grad()
def test_two_bridges_share_one_untouched_model(hf_model):
    shared_before = _shared_layer(hf_model)
    encoder_before = hf_model.albert.encoder
    hf_params = {id(p) for p in hf_model.parameters()}

    short = albert_bridge(hf_model, None, DEPTH)
    long = albert_bridge(hf_model, None, 7)

    # The caller's model keeps its structure and attention implementation.
    assert hf_model.albert.encoder is encoder_before
    assert isinstance(hf_model.albert.encoder, AlbertTransformer)
    assert _shared_layer(hf_model) is shared_before
    assert hf_model.config.num_hidden_layers == DEPTH
    assert hf_model.config._attn_implementation == "eager"

    # No weight copies: both bridges hold exactly the caller's Parameter objects.
    for bridge in (short, long):
        assert {id(p) for p in bridge.parameters()} == hf_params
        assert sum(p.numel() for p in bridge.parameters()) == sum(
            p.numel() for p in hf_model.parameters()
        )

    ref_resid, ref_patterns = _reference_loop(hf_model, 7)
    for bridge, steps in ((short, DEPTH), (long, 7), (short, DEPTH)):
        resid, patterns = _bridge_run(bridge, steps)
        for i, ours in enumerate(resid):
            assert _max_diff(ours, ref_resid[i]) < ATOL, f"{steps}: residual {i}"
        for i, ours in enumerate(patterns):
            assert _max_diff(ours, ref_patterns[i]) < ATOL, f"{steps}: pattern {i}"

    out = hf_model(IDS, output_hidden_states=True)
    for ours, theirs in zip(out.hidden_states, ref_resid):
        assert _max_diff(ours, theirs) < ATOL


@torch.no_grad()
def test_bare_albert_model_has_no_head():
    torch.manual_seed(1)
    model = AlbertModel(_config(), add_pooling_layer=False).eval()
    bridge = albert_bridge(model, None, 4)
    assert len(bridge.blocks) == 4
    assert not hasattr(bridge, "unembed")

    ref_resid, _ = _reference_loop(model, 4)
    resid, _ = _bridge_run(bridge, 4)
    for i, (ours, theirs) in enumerate(zip(resid, ref_resid)):
        assert _max_diff(ours, theirs) < ATOL, f"residual {i}"
    assert _max_diff(bridge(IDS), ref_resid[-1]) < ATOL


@torch.no_grad()
def test_tokenizer_and_padded_batch(hf_model, tmp_path):
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    bridge = albert_bridge(hf_model, tokenizer, DEPTH)

    texts = ["the cat sat on the mat", "the cat"]
    # A padded batch: the bridge must build the attention mask itself, as HF's caller would.
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    assert not bool(enc.attention_mask.all())
    expected = hf_model(**enc).logits
    got = bridge(texts)
    real = enc.attention_mask.bool()
    assert _max_diff(got[real], expected[real]) < ATOL
