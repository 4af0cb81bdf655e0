"""One seeded subsample for every place that keeps k of n items (corpus sentences, aligned pairs,
held-out pairs), so the same file, seed and size select the same items everywhere."""
from typing import List, Optional

import numpy as np


def subsample_indices(n: int, k: Optional[int], seed: int) -> List[int]:
    """`k` distinct indices of `range(n)` drawn with numpy's `default_rng(seed)`, in increasing order
    (file order is kept). All of them when `k` is None or not smaller than `n`."""
    if k is None or k >= n:
        return list(range(n))
    if k <= 0:
        raise ValueError(f"the sample size must be positive, got {k}")
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)).tolist()
