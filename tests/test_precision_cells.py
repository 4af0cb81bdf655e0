"""examples/grid_precision_cells.py: the fp32-vs-bf16 table of docs/results, from synthetic prediction files."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
from grid_precision_cells import compare  # noqa: E402


def write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_precision_gap_seed_spread_and_agreement(tmp_path):
    # NLI, 4 examples: accuracy fp32 seed0 75, seed1 50; bf16 seed0 50 (one label flipped), seed1 50
    correct = {("fp32", 0): [1, 1, 1, 0], ("fp32", 1): [1, 0, 1, 0],
               ("bf16", 0): [1, 1, 0, 0], ("bf16", 1): [1, 0, 1, 0]}
    # retrieval, 2 queries, 2 layers: last-layer ranks
    ranks = {("fp32", 0): [1, 2], ("fp32", 1): [1, 1], ("bf16", 0): [1, 2], ("bf16", 1): [2, 1]}
    for (precision, seed), flags in correct.items():
        root = tmp_path / precision
        write(root / f"nli/original/all/seed{seed}/predictions_test_es.jsonl",
              [{"id": i, "pred": "entailment" if c else "neutral", "correct": bool(c)} for i, c in enumerate(flags)])
        write(root / f"xsr_nli/original/all/seed{seed}/predictions_es.jsonl",
              [{"id": f"q{i}", "ranks": [5, r], "gold": i, "pred": 0} for i, r in enumerate(ranks[precision, seed])])
    rows = [line.split(" | ") for line in compare(str(tmp_path / "bf16"), str(tmp_path / "fp32")).splitlines()[2:]]
    nli, xsr = rows
    # fp32 s0, fp32 s1, bf16 s0, bf16 s1, mean |fp32 - bf16|, spread fp32, spread bf16, same prediction
    assert nli[2:] == ["75.00", "50.00", "50.00", "50.00", "12.50", "25.00", "0.00", "87.5% |"]
    # MRR: fp32 (1 + 1/2)/2 = 75, 100; bf16 75, 75; the same last-layer rank: 2 of 2 queries, then 1 of 2
    assert xsr[2:] == ["75.00", "100.00", "75.00", "75.00", "12.50", "25.00", "0.00", "75.0% |"]
