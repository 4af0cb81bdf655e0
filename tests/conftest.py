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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA
