"""fp32 against bf16 on grid cells, next to the same cells' seed-to-seed spread: is the precision's effect smaller
than the noise the paper's statistics already carry? (docs/results/e5-small-offline.md, "bf16 against fp32".)

Reads two results folders of examples/grid_e5_offline.yaml run with the same seeds: the bf16 grid and an fp32 run
of the cells (the same yaml with `HF_XLADJUST_PRECISION: fp32`, whose fingerprints therefore differ). Per test set
of each cell it prints the score of every seed in both precisions, the mean |fp32 - bf16| over seeds (same seed,
same data order: only the precision differs), the seed spread |seed a - seed b| in each precision, and the share
of examples with the same prediction in both precisions (NLI: the label; retrieval: the gold's rank at the last
layer). Cells: NLI accuracy of `nli/original/all` (x100) and Tatoeba MRR at the last layer
of `xsr_nli/original/all` (x100; the retrieval of those NLI models).

    python examples/grid_precision_cells.py outputs/grid-e5-offline-bf16 outputs/grid-e5-offline-fp32-cells
"""
import glob
import itertools
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hf_xladjust.report import read_predictions  # noqa: E402

CELLS = (("nli", "nli/original/all", "predictions_test_*.jsonl", "accuracy"),
         ("xsr", "xsr_nli/original/all", "predictions_*.jsonl", "MRR, last layer"))


def per_example(task, path):
    """Per-example ids, scores and predictions in file order (ids checked equal across runs by the caller)."""
    pred = read_predictions(path, task)
    if task == "nli":
        with open(path, encoding="utf-8") as f:
            labels = [json.loads(line)["pred"] for line in f if line.strip()]
        return pred.ids, pred.values["correct"], labels
    last = pred.values["ranks"][:, -1]  # the gold's rank at the last layer (`pred` is at the best layer)
    return pred.ids, 1.0 / last, last.tolist()


def seeds_of(folder):
    return sorted(int(os.path.basename(p)[4:]) for p in glob.glob(os.path.join(folder, "seed*")))


def compare(bf16_dir, fp32_dir):
    rows = []
    for task, cell, pattern, metric in CELLS:
        seeds = seeds_of(os.path.join(fp32_dir, cell))
        if len(seeds) < 2 or seeds_of(os.path.join(bf16_dir, cell))[:len(seeds)] != seeds:
            sys.exit(f"{cell}: needs the same 2+ seeds in both folders (fp32 {seeds}, "
                     f"bf16 {seeds_of(os.path.join(bf16_dir, cell))})")
        first = os.path.join(fp32_dir, cell, f"seed{seeds[0]}", pattern)
        names = sorted(os.path.basename(p) for p in glob.glob(first))
        for name in names:
            scores = {}
            for precision, root in (("fp32", fp32_dir), ("bf16", bf16_dir)):
                for seed in seeds:
                    path = os.path.join(root, cell, f"seed{seed}", name)
                    ids, values, labels = per_example(task, path)
                    if scores and not np.array_equal(ids, next(iter(scores.values()))[0]):
                        sys.exit(f"{path}: other examples than the first run's")
                    scores[precision, seed] = (ids, values, labels)
            mean = {k: 100 * v.mean() for k, (_, v, _) in scores.items()}
            precision_gap = np.mean([abs(mean["fp32", s] - mean["bf16", s]) for s in seeds])
            spread = {p: np.mean([abs(mean[p, a] - mean[p, b]) for a, b in itertools.combinations(seeds, 2)])
                      for p in ("fp32", "bf16")}
            same = np.mean([np.mean([a == b for a, b in zip(scores["fp32", s][2], scores["bf16", s][2])])
                            for s in seeds])
            label = name[len("predictions_"):-len(".jsonl")]
            rows.append([cell, f"{label} ({metric})"]
                        + [f"{mean[p, s]:.2f}" for p in ("fp32", "bf16") for s in seeds]
                        + [f"{precision_gap:.2f}", f"{spread['fp32']:.2f}", f"{spread['bf16']:.2f}",
                           f"{100 * same:.1f}%"])
    header = (["cell", "set"] + [f"{p} seed {s}" for p in ("fp32", "bf16") for s in seeds]
              + ["mean abs(fp32 - bf16)", "seed spread fp32", "seed spread bf16", "same prediction"])
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + " |"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(compare(sys.argv[1], sys.argv[2]))
