"""Word pooling, slot bookkeeping (subword splits, truncation) and the value of Eq. 1."""
import copy

import pytest
import torch
from conftest import fixture_lines, independent_pull_mse
from transformers import AutoModel, AutoTokenizer

from hf_xladjust.alignment.loss import AlignmentLoss, pool_words
from hf_xladjust.alignment.pairs import AlignedPair, AlignedPairCollator, AlignedPairDataset


def test_pool_words_by_hand():
    # two sentences; tokens: [CLS] a a' b [SEP] | [CLS] c [SEP] pad
    hidden = torch.arange(2 * 5 * 2, dtype=torch.float).reshape(2, 5, 2)
    slot = torch.tensor([[2, 0, 0, 1, 3], [6, 4, 4, 5, -1]])  # 7 slots; -1 is padding
    mean = pool_words(hidden, slot, 7, "mean")
    first = pool_words(hidden, slot, 7, "first")
    last = pool_words(hidden, slot, 7, "last")
    h = hidden.reshape(-1, 2)
    assert torch.equal(mean[0], (h[1] + h[2]) / 2)
    assert torch.equal(first[0], h[1]) and torch.equal(last[0], h[2])
    assert torch.equal(mean[4], (h[6] + h[7]) / 2)
    for pooled in (mean, first, last):
        assert torch.equal(pooled[1], h[3]) and torch.equal(pooled[2], h[0]) and torch.equal(pooled[6], h[5])
    assert mean.shape == (7, 2)


def test_pooling_has_gradients_only_where_used():
    hidden = torch.randn(1, 4, 3, requires_grad=True)
    pool_words(hidden, torch.tensor([[0, 0, -1, 1]]), 2, "mean").sum().backward()
    assert hidden.grad[0, 2].abs().sum() == 0 and hidden.grad[0, 0].abs().sum() > 0


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModel.from_pretrained(tiny_model_dir).eval()
    return tok, model


def test_slots_follow_word_ids_and_truncation_drops_cut_words(tiny):
    tok, _ = tiny
    words = fixture_lines("ru")[9].split()  # река медленно течёт через долину: several subwords per word
    enc = tok(words, is_split_into_words=True)
    n_tokens_full = len(enc["input_ids"])
    assert n_tokens_full > len(words) + 2, "fixture must split some word into several subwords"
    max_length = n_tokens_full - 2  # cut inside the last word(s)
    pair = AlignedPair(words, words, [(k, k) for k in range(len(words))])
    ds = AlignedPairDataset([pair], tok, max_length=max_length)
    feat = ds[0]
    enc_cut = tok(words, is_split_into_words=True, truncation=True, max_length=max_length)
    word_ids = enc_cut.word_ids()
    last_seen = max(w for w in word_ids if w is not None)
    full_counts = [sum(1 for w in enc.word_ids() if w == k) for k in range(len(words))]
    cut_counts = [sum(1 for w in word_ids if w == k) for k in range(len(words))]
    complete = [k for k in range(len(words)) if cut_counts[k] == full_counts[k]]
    assert last_seen not in complete  # the last word seen is cut in two
    # every complete word has its own slot, in order; a cut or missing word has none
    for pos, w in enumerate(word_ids):
        slot = feat["src_token_slot"][pos]
        if w is None:
            assert slot >= len(complete)  # specials come after the words
        elif w in complete:
            assert slot == complete.index(w)
        else:
            assert slot == -1
    assert len(feat["links"]) == len(complete) and ds.links_lost == len(words) - len(complete)


def test_loss_matches_independent_computation(tiny):
    tok, model = tiny
    en, es = [ln.split() for ln in fixture_lines("en")], [ln.split() for ln in fixture_lines("es")]
    pairs = [AlignedPair(s, t, [(0, 0), (1, 1), (len(s) - 1, len(t) - 1)]) for s, t in zip(en, es)]
    batch = AlignedPairCollator(tok.pad_token_id)([f for f in AlignedPairDataset(pairs, tok)])
    out = AlignmentLoss(copy.deepcopy(model))(model, batch)  # f0 = a copy: the constructor freezes it
    assert out["align_loss"].item() == pytest.approx(independent_pull_mse(model, tok, pairs), rel=1e-5)
    assert out["anchor_loss"].item() == pytest.approx(0.0, abs=1e-10)
    assert out["loss"].item() == pytest.approx(out["align_loss"].item(), rel=1e-6)


def test_anchor_and_frozen_pull_use_the_original_model(tiny):
    tok, model = tiny
    en, es = [ln.split() for ln in fixture_lines("en")], [ln.split() for ln in fixture_lines("es")]
    pairs = [AlignedPair(s, t, [(0, 0), (1, 1)]) for s, t in zip(en[:4], es[:4])]
    batch = AlignedPairCollator(tok.pad_token_id)([f for f in AlignedPairDataset(pairs, tok)])
    moved = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in moved.encoder.layer[-1].output.dense.parameters():
            p.add_(0.5 * torch.randn_like(p))
    f0 = copy.deepcopy(model)
    current = AlignmentLoss(f0, anchor_weight=0.5)(moved, batch)
    frozen = AlignmentLoss(f0, pull_target="frozen", anchor_weight=0.5)(moved, batch)
    assert current["anchor_loss"] > 1e-3
    assert current["anchor_loss"] == pytest.approx(frozen["anchor_loss"].item())
    # frozen pulls the moved target towards f0's source; current towards the moved source
    assert frozen["align_loss"].item() != pytest.approx(current["align_loss"].item())
    # the frozen pull against an unmoved model equals the current pull of that model
    assert AlignmentLoss(f0, pull_target="frozen")(model, batch)["align_loss"].item() == pytest.approx(
        AlignmentLoss(f0)(model, batch)["align_loss"].item(), rel=1e-6)
    assert current["loss"].item() == pytest.approx(
        current["align_loss"].item() + 0.5 * current["anchor_loss"].item(), rel=1e-6)


def test_only_the_trained_model_gets_gradients(tiny):
    tok, model = tiny
    trained, f0 = copy.deepcopy(model).train().requires_grad_(True), copy.deepcopy(model)
    pairs = [AlignedPair("a b".split(), "c d".split(), [(0, 0), (1, 1)])]
    batch = AlignedPairCollator(tok.pad_token_id)([f for f in AlignedPairDataset(pairs, tok)])
    loss_fn = AlignmentLoss(f0)
    loss_fn(trained, batch)["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in f0.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.parameters())
    assert not list(loss_fn.parameters())  # f0 is not registered: never saved or optimised
