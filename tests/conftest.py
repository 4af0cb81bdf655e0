"""Shared fixtures: a tiny BERT and a WordPiece tokenizer over the multi-script fixture text."""
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


def fixture_vocabulary(vocab_size):
    """A WordPiece vocabulary built deterministically from the fixture text: the special tokens, every
    character as a word start and as a continuation, then the most frequent whole words (ties by spelling).

    `BertWordPieceTokenizer.train_from_iterator` breaks ties in hash order, so its vocabulary (and every
    number a test computes from it) changed from one run to the next."""
    from collections import Counter

    from tokenizers.pre_tokenizers import BertPreTokenizer

    split = BertPreTokenizer().pre_tokenize_str
    words = Counter(w for lang in LANGS for line in fixture_lines(lang) for w, _ in split(line))
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    known = set(vocab)
    for word, _ in sorted(words.items(), key=lambda item: (-item[1], item[0])):
        if len(vocab) >= vocab_size:
            break
        if word not in known:
            vocab.append(word)
    return vocab


def diagonal_pharaoh(path, n=None):
    """A Pharaoh file linking word k to word k in the first `n` (default: all) en/es fixture pairs: alignments
    without the aligner's randomness, so two runs train on the same links."""
    lines = [" ".join(f"{k}-{k}" for k in range(min(len(a.split()), len(b.split()))))
             for a, b in zip(fixture_lines("en")[:n], fixture_lines("es")[:n])]
    path.write_text("\n".join(lines) + "\n")
    return path


def build_tiny_model(out_dir, vocab_size=400, hidden=32, layers=2, max_positions=64):
    """Save a random tiny BERT plus a WordPiece tokenizer over the fixture text's vocabulary."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = {token: i for i, token in enumerate(fixture_vocabulary(vocab_size))}
    wp = BertWordPieceTokenizer(vocab, lowercase=False, strip_accents=False)
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


def independent_info_nce(src_model, tgt_model, tokenizer, pairs, temperature):
    """The contrastive pull term computed plainly, in float64 with Python loops: word vectors as in
    `independent_pull_mse` (source words from `src_model`, target words from `tgt_model`), one entry per
    word link (no CLS/SEP), logits_ij = cos(s_i, t_j) / τ, and the cross-entropy of the diagonal with the
    log-sum-exp written out, averaged over the pairs and the two directions."""
    import math

    import torch

    def word_vectors(model, words):
        enc = tokenizer(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state[0].double()
        ids = enc.word_ids()
        return {k: h[[i for i, w in enumerate(ids) if w == k]].mean(0) for k in set(ids) - {None}}

    s, t = [], []
    for p in pairs:
        src, tgt = word_vectors(src_model, p.src), word_vectors(tgt_model, p.tgt)
        s += [src[i].tolist() for i, _ in p.links]
        t += [tgt[j].tolist() for _, j in p.links]

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    n = len(s)
    logits = [[cos(s[i], t[j]) / temperature for j in range(n)] for i in range(n)]

    def cross_entropy(rows):
        return sum(math.log(sum(math.exp(v) for v in row)) - row[i] for i, row in enumerate(rows)) / n

    columns = [[logits[i][j] for i in range(n)] for j in range(n)]
    return (cross_entropy(logits) + cross_entropy(columns)) / 2


def paper_sentence_vectors(model, tokenizer, words):
    """One sentence as the paper's code packs it: [CLS], each word (mean of its subword vectors), [SEP]
    (last layer), computed plainly with the tokenizer and model."""
    import torch

    enc = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state[0]
    ids = enc.word_ids()
    word_vecs = [h[[i for i, w in enumerate(ids) if w == k]].mean(0) for k in range(len(words))]
    return torch.stack([h[0], *word_vecs, h[len(ids) - 1]])


def paper_alignment_terms(model, f0, tokenizer, pairs, include_clssep=True, sub_batch_size=None):
    """The paper's loss terms computed plainly, with its construction: packed [CLS] w1..wn [SEP] vectors,
    word links shifted by one, plus CLS<->CLS and SEP<->SEP links (`include_clssep`); pull = MSE over the
    linked vectors, anchor = MSE of every English vector (`src`) against f0; with `sub_batch_size`, the
    SUM over consecutive sub-batches of their means (the paper's loop), else one mean. Returns (pull, anchor)."""
    import torch

    size = sub_batch_size or len(pairs)
    pull = anchor = 0.0
    for start in range(0, len(pairs), size):
        diffs, anchor_diffs = [], []
        for p in pairs[start:start + size]:
            src, tgt = paper_sentence_vectors(model, tokenizer, p.src), paper_sentence_vectors(model, tokenizer, p.tgt)
            links = [(i + 1, j + 1) for i, j in p.links]
            if include_clssep:
                links += [(0, 0), (len(p.src) + 1, len(p.tgt) + 1)]
            diffs += [tgt[j] - src[i] for i, j in links]
            if f0 is not None:
                anchor_diffs.append(src - paper_sentence_vectors(f0, tokenizer, p.src))
        pull += torch.stack(diffs).pow(2).mean().item()
        if f0 is not None:
            anchor += torch.cat(anchor_diffs).pow(2).mean().item()
    return pull, anchor


@pytest.fixture(scope="session")
def hub_repos(tmp_path_factory):
    """Every Hub id the toolkit documents (facebook/xnli, unimelb-nlp/wikiann, rajpurkar/squad, google/xtreme,
    Helsinki-NLP/opus-100) -> a local repository laid out as the Hub serves it (tests/hub_repos.py)."""
    from hub_repos import build_all

    return build_all(tmp_path_factory.mktemp("hub"))
