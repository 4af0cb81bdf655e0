"""Significance tests: the t-test against the t formula, the NER permutation test against brute-force
enumeration of every swap, per-sentence token and entity (tp, fp, fn) counts (vectorised over sentences,
summing to seqeval's entity-level scores) and the marks rule."""
import itertools

import numpy as np
import pytest
from scipy import stats

from hf_xladjust.evaluation.tagging import counts as token_counts
from hf_xladjust.evaluation.tagging import entity_counts, sentence_counts
from hf_xladjust.statistics import (
    best_layer,
    f1_from_counts,
    paired_ttest,
    permutation_test_f1,
    sample_std,
    significance_marks,
)


def test_paired_ttest_agrees_with_the_t_formula():
    rng = np.random.default_rng(0)
    a = rng.random(30)
    b = a + rng.normal(0.05, 0.1, 30)
    p = paired_ttest(a, b)
    # Independently: t = mean(d) / (sd(d) / sqrt(n)) with n - 1 degrees of freedom, two-sided.
    d = a - b
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    assert t < -2  # a real difference, so the p-value below is not a trivial 1.0 or 0.0
    assert p == pytest.approx(2 * stats.t.sf(abs(t), len(d) - 1), rel=1e-10)
    assert 0 < p < 0.05
    assert paired_ttest(b, a) == pytest.approx(p)  # two-sided
    # Identical systems: no evidence of a difference (scipy alone would say NaN); too few pairs: no test.
    assert paired_ttest([1, 0, 1], [1, 0, 1]) == 1.0
    assert paired_ttest([1.0], [0.0]) is None
    assert paired_ttest([1, 1, 1], [0.5, 0.5, 0.5]) == 0.0  # a constant shift
    with pytest.raises(ValueError):
        paired_ttest([1, 2], [1, 2, 3])


def _f1_by_hand(counts):
    tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def _brute_force_p(a, b):
    """Every one of the 2**n swap patterns, scored one by one; two-sided p as the share of patterns
    whose |F1(A') - F1(B')| reaches the observed one."""
    a, b = [tuple(x) for x in a], [tuple(x) for x in b]
    observed = _f1_by_hand(a) - _f1_by_hand(b)
    hits = 0
    patterns = list(itertools.product((False, True), repeat=len(a)))
    for swap in patterns:
        xa = [y if s else x for x, y, s in zip(a, b, swap)]
        xb = [x if s else y for x, y, s in zip(a, b, swap)]
        hits += abs(_f1_by_hand(xa) - _f1_by_hand(xb)) >= abs(observed) - 1e-12
    return observed, hits / len(patterns)


def test_permutation_test_equals_brute_force_enumeration():
    # 8 sentences: 2**8 = 256 <= 1000 resamples, so scipy enumerates exactly.
    a = np.array([[3, 0, 1], [2, 1, 0], [4, 0, 0], [1, 1, 1], [0, 0, 2], [5, 1, 0], [2, 0, 0], [3, 2, 1]])
    b = np.array([[1, 2, 3], [2, 1, 0], [1, 1, 3], [0, 2, 2], [0, 1, 2], [3, 2, 2], [2, 0, 0], [1, 3, 3]])
    diff, p = permutation_test_f1(a, b, n_resamples=1000, seed=0)
    want_diff, want_p = _brute_force_p(a, b)
    assert diff == pytest.approx(want_diff, abs=1e-12)
    assert p == pytest.approx(want_p, abs=1e-12)
    assert p < 0.05
    # The direction does not matter; identical systems are never significant.
    assert permutation_test_f1(b, a)[1] == pytest.approx(p)
    assert permutation_test_f1(a, a)[1] == 1.0
    # A small, mixed difference: not significant, and still exact.
    c = a.copy()
    c[[0, 3]] = b[[0, 3]]
    diff, p = permutation_test_f1(a, c)
    assert (diff, p) == pytest.approx(_brute_force_p(a, c), abs=1e-12)
    assert p > 0.05


def test_permutation_test_sampled_is_seeded_and_close_to_exact():  # both samplers
    rng = np.random.default_rng(1)
    n = 16  # 65,536 swap patterns: scipy samples 1000 of them
    a = rng.integers(0, 4, size=(n, 3))
    b = np.clip(a + rng.integers(-1, 2, size=(n, 3)) * np.array([-1, 1, 1]), 0, None)
    # Exact p by enumerating all patterns with arrays (the same statistic, independently written).
    masks = np.array(list(itertools.product((0, 1), repeat=n)), dtype=bool)[..., None]
    xa, xb = np.where(masks, b, a).sum(1), np.where(masks, a, b).sum(1)
    f1 = lambda s: np.array([_f1_by_hand([row]) for row in s])  # noqa: E731
    null = f1(xa) - f1(xb)
    observed = _f1_by_hand(a) - _f1_by_hand(b)
    exact = np.mean(np.abs(null) >= abs(observed) - 1e-12)
    # scipy's sampler and the numpy one used for large inputs: the same test, different draws.
    for method in ("scipy", "numpy"):
        diff, p = permutation_test_f1(a, b, n_resamples=1000, seed=7, method=method)
        assert diff == pytest.approx(observed)
        assert (p * 1001) == pytest.approx(round(p * 1001))  # (hits + 1) / (1000 + 1), doubled for two sides
        assert permutation_test_f1(a, b, n_resamples=1000, seed=7, method=method)[1] == p  # seeded
        assert abs(p - exact) < 0.06  # ~4 binomial standard deviations at 1000 draws
    assert permutation_test_f1(a, a, method="numpy")[1] == 1.0
    # Exact enumeration always goes through scipy.
    assert permutation_test_f1(a[:8], b[:8], method="numpy") == permutation_test_f1(a[:8], b[:8], method="scipy")


def test_f1_statistic_from_sentence_counts_by_hand():
    gold = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"]
    pred = ["B-PER", "B-PER", "B-LOC", "B-LOC", "O", "O"]
    # Token-level micro F1 without O: tp B-PER, B-LOC (2); fp B-PER for I-PER, B-LOC for O (2); fn I-PER, B-ORG (2)
    assert token_counts(gold, pred) == (2, 2, 2)
    assert f1_from_counts(2, 2, 2) == pytest.approx(0.5)
    assert f1_from_counts(0, 0, 0) == 0.0
    np.testing.assert_allclose(f1_from_counts([1, 0, 3], [1, 2, 0], [0, 0, 1]), [2 / 3, 0.0, 6 / 7])
    # The permutation test's statistic is F1 over the summed sentence counts (not a mean of sentence F1s):
    # A = (2, 2, 2) + (1, 1, 0) -> 2*3 / (2*3 + 3 + 2); B is perfect on both sentences -> 1.
    s2 = (["B-PER", "O"], ["B-PER", "B-PER"])
    a = np.array([token_counts(gold, pred), token_counts(*s2)])
    b = np.array([token_counts(gold, gold), token_counts(s2[0], s2[0])])
    diff, _ = permutation_test_f1(a, b)
    assert diff == pytest.approx(6 / 11 - 1.0)


def test_marks_follow_the_rule():
    assert significance_marks(None, None) == ""
    assert significance_marks(0.01, None) == "*"
    assert significance_marks(0.2, 0.01) == "**"
    assert significance_marks(0.049, 0.001) == "*,**"
    assert significance_marks(0.05, 0.05) == ""  # p < 0.05, strictly
    assert significance_marks(0.08, 0.2, alpha=0.1) == "*"


def test_best_layer_and_std():
    mrr = np.array([[0.1, 0.5, 0.5, 0.2], [0.2, 0.4, 0.6, 0.1]])
    assert best_layer(mrr) == 2  # means 0.15, 0.45, 0.55, 0.15: the mean over seeds decides
    assert best_layer([[0.3, 0.5, 0.5]]) == 1  # a tie goes to the lower layer
    assert sample_std([0.5, 0.7]) == pytest.approx(np.sqrt(0.02))
    assert sample_std([0.5]) is None


def _random_sentences(rng, n, max_len=7, noise=0.4):
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG", "B-ORG"]
    gold = [rng.choice(tags, size=int(rng.integers(0, max_len + 1))).tolist() for _ in range(n)]
    pred = [[t if rng.random() > noise else str(rng.choice(tags)) for t in g] for g in gold]
    return gold, pred


def test_vectorised_counts_equal_per_sentence_counts_with_empty_sentences():
    rng = np.random.default_rng(5)
    gold, pred = _random_sentences(rng, 300)
    # Empty sentences everywhere reduceat could trip over: first, last, and several in a row.
    gold = [[], *gold[:100], [], [], [], *gold[100:], []]
    pred = [[], *pred[:100], [], [], [], *pred[100:], []]
    assert sum(len(g) == 0 for g in gold) > 5
    for level, one in (("token", token_counts), ("entity", entity_counts)):
        got = sentence_counts(gold, pred, level)
        assert got.dtype == np.int64 and got.shape == (len(gold), 3)
        np.testing.assert_array_equal(got, np.array([one(g, p) for g, p in zip(gold, pred)]))
        assert got.sum() > 0 and not got[0].any() and not got[-1].any()
    # Edge cases: no sentences, only empty sentences, and refusals of unequal lengths.
    for level in ("token", "entity"):
        assert sentence_counts([], [], level).shape == (0, 3)
        np.testing.assert_array_equal(sentence_counts([[], []], [[], []], level), np.zeros((2, 3)))
        with pytest.raises(ValueError, match="sentence 1"):
            sentence_counts([["O"], ["O", "B-PER"]], [["O"], ["O"]], level)
    with pytest.raises(ValueError, match="level"):
        sentence_counts([["O"]], [["O"]], "span")


def test_entity_counts_per_sentence_sum_to_seqeval():
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold = [["B-PER", "I-PER", "O", "B-LOC"],      # PER(0-1), LOC(3)
            ["I-PER", "O", "B-ORG", "I-ORG"],      # a stray I- opens PER(0); ORG(2-3)
            ["O", "O"],
            ["B-LOC", "B-LOC"]]                    # two LOC entities
    pred = [["B-PER", "O", "O", "B-LOC"],          # PER(0-0) wrong span, LOC right
            ["I-PER", "O", "B-ORG", "I-ORG"],      # both right
            ["B-PER", "O"],                        # spurious
            ["B-LOC", "I-LOC"]]                    # one LOC(0-1): wrong span for both
    by_sentence = [entity_counts(g, p) for g, p in zip(gold, pred)]
    # By hand: (tp, fp, fn) = (1, 1, 1), (2, 0, 0), (0, 1, 0), (0, 1, 2)
    assert by_sentence == [(1, 1, 1), (2, 0, 0), (0, 1, 0), (0, 1, 2)]
    np.testing.assert_array_equal(sentence_counts(gold, pred, "entity"), by_sentence)
    tp, fp, fn = np.sum(by_sentence, axis=0)
    assert (tp, fp, fn) == (3, 3, 3)
    assert precision_score(gold, pred) == pytest.approx(tp / (tp + fp))
    assert recall_score(gold, pred) == pytest.approx(tp / (tp + fn))
    assert f1_score(gold, pred) == pytest.approx(f1_from_counts(tp, fp, fn)) == pytest.approx(0.5)
    # seqeval keeps the sentences of a list apart: a PER ending one sentence and an I-PER starting the next
    # are two gold entities (PER found in sentence 0, missed in sentence 1), as the per-sentence counts say.
    # Joined into one sentence they would be a single PER(1-2), missed, and the sums would not match.
    g2, p2 = [["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["O", "O"]]
    counts2 = sentence_counts(g2, p2, "entity")
    np.testing.assert_array_equal(counts2, [[1, 0, 0], [0, 0, 1]])
    assert f1_score(g2, p2) == pytest.approx(f1_from_counts(*counts2.sum(0))) == pytest.approx(2 / 3)
    assert f1_score([g2[0] + g2[1]], [p2[0] + p2[1]]) == 0.0
