"""Shared fixtures: a tiny BERT and a WordPiece tokenizer trained here on multi-script text."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"
LANGS = ("en", "es", "ru", "vi", "hi")
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def fixture_lines(lang):
    return (FIXTURES / f"{lang}.txt").read_text(encoding="utf-8").splitlines()


def build_tiny_model(out_dir, vocab_size=400, hidden=32, layers=2, max_positions=64):
    """Save a random tiny BERT plus a WordPiece tokenizer trained on the fixture text."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    text = [line for lang in LANGS for line in fixture_lines(lang)]
    wp = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    wp.train_from_iterator(text, vocab_size=vocab_size, min_frequency=1)
    tokenizer = BertTokenizerFast(tokenizer_object=wp._tokenizer, do_lower_case=False, strip_accents=False,
                                  model_max_length=max_positions)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=max_positions)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def free_port():
    """A free local TCP port for `accelerate launch --main_process_port` (0 means "any free port" only in
    newer accelerate releases; older ones hand 0 to every rank, and the ranks never meet)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


def independent_pull_mse(model, tokenizer, pairs):
    """The pull term of Eq. 1 computed plainly, one sentence at a time: mean of each linked word's
    subword vectors (last layer), squared differences averaged over pairs and hidden dimensions."""
    import torch

    diffs = []
    for p in pairs:
        vecs = []
        for words in (p.src, p.tgt):
            enc = tokenizer(words, is_split_into_words=True, return_tensors="pt")
            with torch.no_grad():
                h = model(**enc).last_hidden_state[0]
            ids = enc.word_ids()
            vecs.append({k: h[[i for i, w in enumerate(ids) if w == k]].mean(0) for k in set(ids) - {None}})
        diffs += [vecs[1][j] - vecs[0][i] for i, j in p.links]
    return torch.stack(diffs).pow(2).mean().item()
