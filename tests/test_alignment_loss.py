"""Word pooling, slot bookkeeping (subword splits, truncation), the value of Eq. 1 and of the
contrastive objective."""
import copy

import pytest
import torch
from conftest import fixture_lines, independent_info_nce, independent_pull_mse
from transformers import AutoModel, AutoTokenizer

from hf_xladjust.alignment.loss import AlignmentLoss, AlignmentLossArguments, info_nce, pool_words
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
    ds = AlignedPairDataset([pair], tok, max_length=max_length, link_special_tokens=False)  # word links only
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
    batch = AlignedPairCollator(tok.pad_token_id)([f for f in AlignedPairDataset(pairs, tok,
                                                                             link_special_tokens=False)])
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


# ---- the contrastive objective ------------------------------------------------------------------------------------
def moved_copy(model, scale=0.5, seed=0):
    moved = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in moved.encoder.layer[-1].output.dense.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return moved


@pytest.mark.parametrize("pull_target", ["current", "frozen"])
def test_contrastive_matches_independent_computation(tiny, pull_target):
    tok, model = tiny
    en, es = [ln.split() for ln in fixture_lines("en")], [ln.split() for ln in fixture_lines("es")]
    pairs = [AlignedPair(s, t, [(0, 0), (1, 1)]) for s, t in zip(en[:3], es[:3])]  # 6 word links
    trained, f0 = moved_copy(model), copy.deepcopy(model)
    src_model = f0 if pull_target == "frozen" else trained
    expected = independent_info_nce(src_model, trained, tok, pairs, temperature=0.07)
    l2 = AlignmentLoss(f0, pull_target=pull_target, anchor_weight=0.5, align_weight=0.3)
    contrastive = AlignmentLoss(f0, pull_target=pull_target, anchor_weight=0.5, align_weight=0.3,
                                align_objective="contrastive", align_temperature=0.07)
    for specials in (False, True):  # CLS<->CLS and SEP<->SEP links do not enter the InfoNCE
        features = AlignedPairDataset(pairs, tok, link_special_tokens=specials)
        batch = AlignedPairCollator(tok.pad_token_id)(list(features))
        assert len(batch["src_link_slots"]) == 6 + 6 * specials and len(batch["word_links"]) == 6
        out = contrastive(trained, batch)
        assert out["align_loss"].dtype == torch.float32 and out["num_links"] == 6
        assert out["align_loss"].item() == pytest.approx(expected, abs=1e-5)
        # the anchor term is the l2 objective's, weighted the same
        assert out["anchor_loss"].item() > 1e-4
        assert out["anchor_loss"].item() == pytest.approx(l2(trained, batch)["anchor_loss"].item(), rel=1e-6)
        assert out["loss"].item() == pytest.approx(0.3 * expected + 0.5 * out["anchor_loss"].item(), abs=1e-5)


def test_info_nce_edge_cases_and_fp32_under_autocast():
    gen = torch.Generator().manual_seed(0)
    src, tgt = torch.randn(7, 16, generator=gen), torch.randn(7, 16, generator=gen)
    value = info_nce(src, tgt, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the matmul must not drop to bf16
        assert torch.equal(info_nce(src, tgt, 0.1), value)
    # scale-free (cosine), symmetric in its two sides, and the same under a permutation of the pairs
    perm = torch.randperm(7, generator=gen)
    assert info_nce(3 * src, tgt, 0.1).item() == pytest.approx(value.item(), rel=1e-6)
    assert info_nce(tgt, src, 0.1).item() == pytest.approx(value.item(), rel=1e-6)
    assert info_nce(src[perm], tgt[perm], 0.1).item() == pytest.approx(value.item(), rel=1e-6)
    # no links: 0 with a gradient path, not NaN; one link: no negatives, 0
    empty = torch.zeros(0, 16, requires_grad=True)
    zero = info_nce(empty, empty, 0.1)
    zero.backward()
    assert zero.item() == 0.0 and empty.grad is not None
    assert info_nce(src[:1], tgt[:1], 0.1).item() == pytest.approx(0.0, abs=1e-6)
    # identical sides score better than unrelated ones
    assert info_nce(src, src, 0.1) < value


def test_l2_objective_is_the_default_and_unchanged(tiny):
    tok, model = tiny
    en, es = [ln.split() for ln in fixture_lines("en")], [ln.split() for ln in fixture_lines("es")]
    pairs = [AlignedPair(s, t, [(0, 0), (1, 1)]) for s, t in zip(en[:4], es[:4])]
    batch = AlignedPairCollator(tok.pad_token_id)(list(AlignedPairDataset(pairs, tok, link_special_tokens=True)))
    trained, f0 = moved_copy(model), copy.deepcopy(model)
    default, explicit = AlignmentLoss(f0)(trained, batch), AlignmentLoss(f0, align_objective="l2")(trained, batch)
    assert AlignmentLossArguments().align_objective == "l2"
    assert all(torch.equal(default[k], explicit[k]) for k in ("loss", "align_loss", "anchor_loss"))
    assert default["num_links"] == len(batch["src_link_slots"]) == 16  # the l2 pull keeps the CLS/SEP links


@pytest.mark.parametrize("kwargs, message", [
    (dict(align_objective="cosine"), "--align_objective must be one of"),
    (dict(align_temperature=0.0), "--align_temperature must be positive, got 0.0"),
    (dict(align_temperature=-0.1), "--align_temperature must be positive"),
    (dict(align_temperature=float("nan")), "--align_temperature must be positive"),
    (dict(align_objective="contrastive", sub_batch_size=4), "--sub_batch_size"),
])
def test_bad_contrastive_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AlignmentLossArguments(**kwargs)
    with pytest.raises(ValueError, match=message):
        AlignmentLoss(None, anchor_weight=0.0, **kwargs)


def test_contrastive_batch_with_only_special_links_has_pull_term_zero(tiny):
    tok, model = tiny
    pairs = [AlignedPair("a b".split(), "c d".split(), []), AlignedPair("e f".split(), "g h".split(), [])]
    batch = AlignedPairCollator(tok.pad_token_id)(list(AlignedPairDataset(pairs, tok, link_special_tokens=True)))
    trained = copy.deepcopy(model).train().requires_grad_(True)
    out = AlignmentLoss(copy.deepcopy(model), align_objective="contrastive")(trained, batch)
    assert len(batch["src_link_slots"]) == 4 and out["num_links"] == 0 and out["align_loss"].item() == 0.0
    out["loss"].backward()  # counted as a batch without links by the trainers; finite, no NaN
    assert all(torch.isfinite(p.grad).all() for p in trained.parameters() if p.grad is not None)
