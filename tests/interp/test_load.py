"""`interp.load`: every kind of source, the random-init control, and each bad input's error."""

from __future__ import annotations

import json

import pytest
import torch

import interp
from interp import toy

TEXT = "the cat sat on the mat"


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.bridge.named_parameters()}


@pytest.mark.parametrize("family", ["gpt2", "bert", "albert"])
def test_random_init_is_the_same_architecture_with_fresh_seeded_weights(checkpoint_dirs, family):
    trained = _params(interp.load(checkpoint_dirs[family]))
    rng_before = torch.random.get_rng_state()
    a = interp.load(checkpoint_dirs[family], random_init=True, seed=7)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # caller's RNG untouched
    b = _params(interp.load(checkpoint_dirs[family], random_init=True, seed=7))
    c = _params(interp.load(checkpoint_dirs[family], random_init=True, seed=8))
    pa = _params(a)
    assert pa.keys() == trained.keys() == b.keys()
    assert all(torch.equal(pa[k], b[k]) for k in pa)
    # Every weight matrix is redrawn (norm scales and biases may share a constant init).
    matrices = [k for k, v in pa.items() if v.ndim == 2]
    assert matrices and all(not torch.equal(pa[k], trained[k]) for k in matrices)
    assert all(not torch.equal(pa[k], c[k]) for k in matrices)
    assert a.random_init and a.seed == 7 and a.tokenizer is not None
    assert interp.trace(a, TEXT).tokens == interp.trace(interp.load(checkpoint_dirs[family]),
                                                        TEXT).tokens


def test_minilm_alias_loads_the_real_pretrained_model():
    model = interp.load("minilm")
    assert (model.family, model.n_layers, model.n_heads, model.d_model) == ("bert", 6, 12, 384)
    assert model.causal is False and model.n_ctx == 512
    # Trained weights, not an initialiser's draw: word embeddings of a BERT init have std 0.02.
    std = model.bridge.embed.weight.std()
    rand_std = interp.load("minilm", random_init=True).bridge.embed.weight.std()
    assert abs(rand_std - 0.02) < 1e-3 and abs(std - 0.02) > 0.01


def test_dtype_and_device_are_applied(gpt2_dir):
    model = interp.load(gpt2_dir, dtype=torch.float64, device="cpu")
    tr = interp.trace(model, TEXT)
    assert tr.resid.dtype == tr.pattern.dtype == tr.W_Q.dtype == torch.float64
    ref = interp.trace(interp.load(gpt2_dir), TEXT)
    torch.testing.assert_close(tr.resid.float(), ref.resid, atol=1e-5, rtol=0)


def test_toy_round_trip_through_safetensors_and_json(tmp_path):
    cfg = toy.ToyConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32, n_ctx=12,
                        d_vocab=23, causal=True)
    bridge = toy.build(cfg, seed=3)
    with torch.no_grad():  # move off the initialiser's draw, as training would
        for p in bridge.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = toy.save_toy(bridge, cfg, tmp_path / "toy")
    assert sorted(f.name for f in path.iterdir()) == ["model.safetensors", "toy_config.json"]
    assert json.loads((path / "toy_config.json").read_text())["format"] == toy.FORMAT

    model = interp.load(path)
    assert model.family == "toy" and model.causal and model.n_ctx == 12
    loaded = _params(model)
    assert all(torch.equal(loaded[k], p) for k, p in bridge.named_parameters())
    ids = [1, 5, 2, 22, 0, 7]
    tr = interp.trace(model, ids)
    assert tr.tokens == ["1", "5", "2", "22", "0", "7"]
    assert tr.resid.shape == (3, 6, 16) and tr.pattern.shape == (2, 2, 6, 6)
    assert torch.count_nonzero(torch.triu(tr.pattern, diagonal=1)) == 0

    control = interp.load(path, random_init=True, seed=3)
    fresh = toy.build(cfg, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(control.bridge.parameters(), fresh.parameters()))
    assert not torch.equal(control.bridge.embed.weight, model.bridge.embed.weight)
    with pytest.raises(ValueError, match="no tokenizer; pass token ids"):
        interp.trace(model, "some text")
    with pytest.raises(FileExistsError, match="not empty"):
        toy.save_toy(bridge, cfg, path)


def test_bad_toy_config_is_refused():
    with pytest.raises(ValueError, match="d_model must be a positive int"):
        toy.ToyConfig(n_layers=1, n_heads=1, d_model=0, d_head=1, d_mlp=1, n_ctx=1, d_vocab=1)


def test_unknown_name_with_no_local_path():
    with pytest.raises(interp.ModelLoadError, match="unknown model 'gpt3-mini'.*Known names: "
                       "minilm, gpt2, gpt2-medium"):
        interp.load("gpt3-mini")


@pytest.mark.parametrize("name", ["gpt2", "albert-xlarge-v2"])
def test_hub_name_while_offline_says_so_and_how_to_pass_a_local_path(name):
    # The hub is unreachable from the test machines; a user who has it would download instead.
    with pytest.raises(interp.ModelLoadError, match=rf"'{name}' .* Hugging Face hub.*"
                       r"unreachable|HF_HUB_OFFLINE") as err:
        interp.load(name)
    assert "--local-dir DIR" in str(err.value) and "interp.load('DIR')" in str(err.value)


def test_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(interp.ModelLoadError, match="is not a checkpoint: expected config.json"):
        interp.load(tmp_path)
    with pytest.raises(interp.ModelLoadError, match="is a file; expected a checkpoint directory"):
        interp.load(tmp_path / "notes.txt")


def test_checkpoint_without_safetensors_weights(tmp_path, gpt2_dir):
    (tmp_path / "config.json").write_text((gpt2_dir / "config.json").read_text())
    with pytest.raises(interp.ModelLoadError, match="no \\*.safetensors weights"):
        interp.load(tmp_path)
    # The architecture alone is enough for the random-init control.
    assert interp.load(tmp_path, random_init=True).tokenizer is None


def test_unsupported_family(tmp_path):
    from transformers import T5Config

    T5Config(d_model=8, num_layers=1, num_heads=1, d_kv=8, d_ff=8).save_pretrained(tmp_path)
    with pytest.raises(interp.ModelLoadError, match="'t5' checkpoint; supported families"):
        interp.load(tmp_path, random_init=True)


def test_bad_dtype(gpt2_dir):
    with pytest.raises(interp.ModelLoadError, match="dtype must be a floating torch.dtype"):
        interp.load(gpt2_dir, dtype=torch.int64)


# Loads each hub name from an HF cache laid out as huggingface_hub writes it, holding the
# tiny checkpoints, in a process whose cache points there: the real by-name path, no network.
BY_NAME = """
import json, sys, torch, interp
out = {}
for name, path in json.loads(sys.argv[1]).items():
    by_name, by_path = interp.load(name), interp.load(path)
    ids = list(range(5, 25))
    a, b = interp.trace(by_name, ids), interp.trace(by_path, ids)
    out[name] = [by_name.family, torch.equal(a.resid, b.resid), torch.equal(a.pattern, b.pattern),
                 a.tokens == b.tokens]
print(json.dumps(out))
"""


def test_hub_names_load_from_the_local_hf_cache_when_the_hub_is_unreachable(tmp_path,
                                                                              checkpoint_dirs):
    import os
    import shutil
    import subprocess
    import sys

    cache, names = tmp_path / "hub", {"gpt2": "gpt2", "bert-base-uncased": "bert",
                                       "albert-base-v2": "albert"}
    for name, family in names.items():
        repo = cache / ("models--" + interp.HUB_MODELS[name].replace("/", "--"))
        commit = "0" * 40
        shutil.copytree(checkpoint_dirs[family], repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    arg = json.dumps({n: str(checkpoint_dirs[f]) for n, f in names.items()})
    run = subprocess.run([sys.executable, "-c", BY_NAME, arg], env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got == {n: [f, True, True, True] for n, f in names.items()}


def test_tokenizer_that_does_not_fit_the_model(tmp_path, gpt2_dir, bert_dir):
    import shutil

    shutil.copytree(gpt2_dir, tmp_path, dirs_exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):  # BERT's 30522 tokens, GPT-2's 300 rows
        shutil.copy(bert_dir / f, tmp_path / f)
    with pytest.raises(interp.ModelLoadError, match="30522 tokens but the model embeds 300"):
        interp.load(tmp_path)
