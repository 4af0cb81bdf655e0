"""Significance tests behind the paper's tables, on per-example results saved by the run_*.py scripts.

* XNLI, QA, XSR: each example's metric (correctness, F1/EM, reciprocal rank) is averaged over the
  seeds of a configuration, and two configurations are compared with a paired t-test over
  examples (`scipy.stats.ttest_rel`).
* NER: the example-level predictions of all seeds are concatenated (sentence i of seed s of one
  configuration is paired with sentence i of seed s of the other) and a paired permutation test
  swaps each pair's predictions between the two systems and re-scores micro F1
  (`scipy.stats.permutation_test`, `permutation_type="samples"`, seeded). Token-level and seqeval's
  entity-level micro F1 are both functions of the summed per-sentence (tp, fp, fn) counts, so a swap
  exchanges two count vectors and every permutation is re-scored with array operations.
* Marks as in the paper: `*` differs significantly from Original, `**` from Adjusted (p < 0.05).
"""
from typing import Optional, Sequence, Tuple

import numpy as np

ALPHA = 0.05
N_RESAMPLES = 1000
# Permutations scored in one vectorised call: bounds the (batch, sentences) arrays to ~40 MB.
_MAX_BATCH_ELEMENTS = 5_000_000
# Above this many sentences the NER permutation test draws its own swap masks (see permutation_test_f1).
SCIPY_MAX_SENTENCES = 2000


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Two-sided p-value of `scipy.stats.ttest_rel(a, b)` over paired examples.

    Differences without spread: all zero gives 1.0 (scipy: NaN; no evidence of a difference), a
    constant shift 0.0 (as scipy's infinite t). Fewer than two pairs: None (no test)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired t-test needs two 1-D arrays of one length, got {a.shape} and {b.shape}")
    if len(a) < 2:
        return None
    d = a - b
    if np.all(d == d[0]):  # no spread: scipy's t is NaN (all zero) or infinite, with a precision warning
        return 1.0 if d[0] == 0 else 0.0
    p = float(stats.ttest_rel(a, b).pvalue)
    return None if np.isnan(p) else p


def f1_from_counts(tp, fp, fn):
    """Micro F1 = 2tp / (2tp + fp + fn) (the same as 2PR / (P + R)); 0 where nothing was predicted
    or gold. Works element-wise on arrays."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros(np.broadcast(tp, denom).shape), where=denom > 0)


def permutation_test_f1(counts_a: np.ndarray, counts_b: np.ndarray, n_resamples: int = N_RESAMPLES,
                        seed: int = 0, method: str = "auto") -> Tuple[float, float]:
    """Paired permutation test of F1(A) - F1(B) over sentences.

    `counts_a`, `counts_b`: (sentences, 3) arrays of per-sentence (tp, fp, fn) of the two systems on the
    same sentences (in the same order). Each permutation swaps a random subset of sentences between the
    systems and re-scores both F1s from the summed counts. Two-sided, with scipy's p-value: all 2**n swap
    patterns enumerated exactly when that is no more than `n_resamples`, otherwise `n_resamples` random
    ones and p = 2 * (min(hits below, hits above) + 1) / (n_resamples + 1).

    `method="auto"`: up to `SCIPY_MAX_SENTENCES` sentences, and for every exact test, this is
    `scipy.stats.permutation_test` (`permutation_type="samples"`, vectorised statistic). scipy draws its
    permutations with a Python loop over the sentences, which takes minutes at the paper's size
    (5 seeds x 10,000 WikiANN sentences, 12 tests per table); above the limit the same test runs on
    swap masks drawn in blocks with numpy, seeded the same way (`numpy.random.default_rng(seed)`),
    though not the same draws as scipy's. `method="scipy"` or `"numpy"` forces one of the two.
    Returns (observed difference, p-value)."""
    counts_a, counts_b = np.asarray(counts_a, dtype=np.float64), np.asarray(counts_b, dtype=np.float64)
    if counts_a.shape != counts_b.shape or counts_a.ndim != 2 or counts_a.shape[1] != 3:
        raise ValueError(f"need two (sentences, 3) count arrays of one shape, got {counts_a.shape} and "
                         f"{counts_b.shape}")
    n = len(counts_a)
    if n == 0:
        raise ValueError("no sentences to compare")
    if method not in ("auto", "scipy", "numpy"):
        raise ValueError(f"method must be auto, scipy or numpy, got {method!r}")
    exact = n < 63 and 2 ** n <= n_resamples
    # Swapping sentence i moves its (B - A) count difference from system B's totals to system A's, so the
    # re-scored totals of a batch of swap masks are one matrix product.
    total_a, total_b, delta = counts_a.sum(axis=0), counts_b.sum(axis=0), counts_b - counts_a

    def f1_difference(swapped):
        moved = swapped @ delta
        sa, sb = total_a + moved, total_b - moved
        return f1_from_counts(sa[..., 0], sa[..., 1], sa[..., 2]) - f1_from_counts(sb[..., 0], sb[..., 1], sb[..., 2])

    rng = np.random.default_rng(seed)
    batch = max(1, _MAX_BATCH_ELEMENTS // n)
    if method == "scipy" or exact or (method == "auto" and n <= SCIPY_MAX_SENTENCES):
        from scipy import stats

        def statistic(x, y, axis=-1):
            # The samples are row numbers: i for system A's sentence i, n + i for system B's.
            return f1_difference((np.moveaxis(x, axis, -1) >= n).astype(np.float64))

        rows = np.arange(n)
        result = stats.permutation_test((rows, rows + n), statistic, permutation_type="samples", vectorized=True,
                                        n_resamples=n_resamples, alternative="two-sided", batch=batch,
                                        random_state=rng)
        return float(result.statistic), float(result.pvalue)

    observed = float(f1_difference(np.zeros(n)))
    gamma = abs(np.finfo(np.float64).eps * 100 * observed)  # scipy's tolerance for ties
    below = above = 0
    for start in range(0, n_resamples, batch):
        null = f1_difference((rng.random((min(batch, n_resamples - start), n)) < 0.5).astype(np.float64))
        below += int((null <= observed + gamma).sum())
        above += int((null >= observed - gamma).sum())
    p = 2 * min(below + 1, above + 1) / (n_resamples + 1)
    return observed, float(min(p, 1.0))


def significance_marks(p_vs_original: Optional[float], p_vs_adjusted: Optional[float],
                       alpha: float = ALPHA) -> str:
    """`*` when different from Original, `**` when different from Adjusted (p < alpha); both: `*,**`.
    A missing test (None) gives no mark."""
    marks = []
    if p_vs_original is not None and p_vs_original < alpha:
        marks.append("*")
    if p_vs_adjusted is not None and p_vs_adjusted < alpha:
        marks.append("**")
    return ",".join(marks)


def sample_std(values: Sequence[float]) -> Optional[float]:
    """Standard deviation over seeds with Bessel's correction (ddof=1); None for a single seed."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1)) if len(values) > 1 else None


def reciprocal_rank_by_layer(ranks: np.ndarray) -> np.ndarray:
    """1 / rank for (queries, layers) arrays of 1-based ranks of the gold candidate."""
    return 1.0 / np.asarray(ranks, dtype=np.float64)


def best_layer(mrr_by_seed: np.ndarray) -> int:
    """The layer with the highest MRR averaged over seeds (`mrr_by_seed`: (seeds, layers)); the lowest
    index wins a tie. One layer per model state, so its per-query reciprocal ranks can be averaged
    over seeds and tested like any per-example metric."""
    return int(np.argmax(np.asarray(mrr_by_seed, dtype=np.float64).mean(axis=0)))

