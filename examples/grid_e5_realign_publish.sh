#!/usr/bin/env bash
# What docs/results/e5-small-realign.md shows, from a finished examples/grid_e5_realign_offline.yaml results
# folder: the report's tables with p-values, retrieval by layer (every regime, encoders and NLI models), Fig. 1
# (seed 0: the original and the four adjusted encoders, on held-out FLORES-101 devtest pairs) and the measured
# wall time of every step kind.
#
#   bash examples/grid_e5_realign_publish.sh [RESULTS_DIR] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-outputs/grid-e5-realign}
OUT=${2:-docs/results/e5-small-realign}
PY=${PYTHON:-.venv/bin/python}
FLORES=../shared/data/parallel/flores101_devtest
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

"$PY" -m hf_xladjust.report "$RESULTS" --output_dir "$OUT"

# Retrieval by layer: MRR x100 of every hidden state, mean over seeds (xsr_{lang}_mrr_layer{k} of all_results.json)
"$PY" - "$RESULTS" "$OUT" <<'EOF'
import csv, glob, json, os, sys
from statistics import mean
res, out = sys.argv[1:3]
NAMES = {"original": "Original", "adjusted": "Adjusted", "adjusted_lora": "Adjusted (LoRA)",
         "adjusted_sentence": "Adjusted (sentence, L6)", "adjusted_frozen": "Adjusted (frozen)"}
rows = []
for task in ("xsr", "xsr_nli"):
    for regime, name in NAMES.items():
        for lang in ("es", "hi"):
            files = glob.glob(f"{res}/{task}/{regime}/{lang}/seed*/all_results.json") or \
                glob.glob(f"{res}/{task}/{regime}/all/seed*/all_results.json")
            runs = [r for r in (json.load(open(f)) for f in sorted(files)) if f"xsr_{lang}_mrr_layer0" in r]
            if runs:
                n = 1 + max(int(k.rsplit("layer", 1)[1]) for k in runs[0] if k.startswith(f"xsr_{lang}_mrr_layer"))
                rows.append((task, name, lang, len(runs),
                             [100 * mean(r[f"xsr_{lang}_mrr_layer{k}"] for r in runs) for k in range(n)]))
with open(os.path.join(out, "xsr_by_layer.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["task", "model", "lang", "seeds"] + [f"L{k}" for k in range(len(rows[0][4]))])
    w.writerows([t, n, l, s] + [f"{v:.2f}" for v in m] for t, n, l, s, m in rows)
md = []
for task, title in (("xsr", "Encoders"), ("xsr_nli", "NLI-fine-tuned models (es only, and Original's)")):
    sel = sorted((r for r in rows if r[0] == task), key=lambda r: (r[2], list(NAMES.values()).index(r[1])))
    if not sel:
        continue
    ks = range(0, len(sel[0][4]), 2)
    md += [f"### {title}", "", "| model | lang | " + " | ".join(f"L{k}" for k in ks) + " | best |",
           "| --- | --- |" + " ---: |" * (len(ks) + 1)]
    for _, n, l, s, m in sel:
        best = max(range(len(m)), key=m.__getitem__)
        md.append(f"| {n} | {l} | " + " | ".join(f"{m[k]:.1f}" for k in ks) + f" | {m[best]:.1f} (L{best}) |")
    md.append("")
open(os.path.join(out, "xsr_by_layer.md"), "w").write("\n".join(md))
EOF

# Paired t-tests at every layer (per-query reciprocal rank averaged over seeds, as the report at the best layer):
# each regime against Original and Adjusted; the .md keeps L6 (the sentence regime's layer) and L12 (the last)
"$PY" - "$RESULTS" "$OUT" <<'EOF'
import csv, glob, json, os, sys
import numpy as np
from hf_xladjust.statistics import paired_ttest, reciprocal_rank_by_layer
res, out = sys.argv[1:3]
NAMES = {"original": "Original", "adjusted": "Adjusted", "adjusted_lora": "Adjusted (LoRA)",
         "adjusted_sentence": "Adjusted (sentence, L6)", "adjusted_frozen": "Adjusted (frozen)"}
def rr(task, regime, lang):  # (queries, layers) reciprocal ranks averaged over seeds, or None
    files = sorted(glob.glob(f"{res}/{task}/{regime}/{lang}/seed*/predictions_{lang}.jsonl")) or \
        sorted(glob.glob(f"{res}/{task}/{regime}/all/seed*/predictions_{lang}.jsonl"))
    if not files:
        return None
    runs = [reciprocal_rank_by_layer([json.loads(x)["ranks"] for x in open(f)]) for f in files]
    return np.mean(runs, axis=0), len(files)
rows, md = [], ["| task | model | lang | layer | MRR | vs Original: Δ, p | vs Adjusted: Δ, p |",
                "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
for task in ("xsr", "xsr_nli"):
    for lang in ("es", "hi"):
        base = {r: rr(task, r, lang) for r in ("original", "adjusted")}
        for regime in list(NAMES)[1:]:
            got = rr(task, regime, lang)
            if got is None:
                continue
            a, n = got
            for layer in range(a.shape[1]):
                cells = []
                for ref in ("original", "adjusted"):
                    if ref == regime or base[ref] is None:
                        cells.append((None, None))
                        continue
                    b = base[ref][0][:, layer]
                    cells.append((100 * (a[:, layer].mean() - b.mean()), paired_ttest(a[:, layer], b)))
                rows.append([task, NAMES[regime], lang, layer, n, f"{100 * a[:, layer].mean():.2f}"]
                            + [f"{x:.3g}" if x is not None else "" for c in cells for x in c])
                if layer in (6, 12):
                    md.append(f"| {task} | {NAMES[regime]} | {lang} | L{layer} | {100 * a[:, layer].mean():.1f} | "
                              + " | ".join("-" if d is None else f"{d:+.1f}, {p:.3g}" for d, p in cells) + " |")
with open(os.path.join(out, "xsr_layer_pvalues.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["task", "model", "lang", "layer", "seeds", "mrr", "delta_vs_original", "p_vs_original",
                "delta_vs_adjusted", "p_vs_adjusted"])
    w.writerows(rows)
open(os.path.join(out, "xsr_layer_pvalues.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF

# Fig. 1: seed 0's encoders, on held-out pairs aligned here (never trained on; the sample of e5-small-offline's)
for pair in es:spa hi:hin; do
    lang=${pair%%:*} code=${pair##*:}
    [ -f "$RESULTS/fig1/$lang/distances.json" ] ||  # measured already: delete the folder to measure again
    "$PY" -m hf_xladjust.evaluation.distances --model original=.cache/e5-small-grid \
        --model adjusted="$RESULTS/adjust/$lang/seed0" --model lora="$RESULTS/adjust_lora/$lang/seed0/merged" \
        --model sentence_L6="$RESULTS/adjust_sentence/$lang/seed0" --model frozen="$RESULTS/adjust_frozen/$lang/seed0" \
        --source_file "$FLORES/eng.devtest" --target_file "$FLORES/$code.devtest" --target_lang "$lang" \
        --max_sentences 500 --device cpu --output_dir "$RESULTS/fig1/$lang"
    cp "$RESULTS/fig1/$lang/distances.png" "$OUT/fig1_$lang.png"
    cp "$RESULTS/fig1/$lang/distances.json" "$OUT/fig1_$lang.json"
done

# Measured wall time per step kind (from each step's _SUCCESS.json), and the grid's span
"$PY" -m hf_xladjust.experiments examples/grid_e5_realign_offline.yaml --results_dir "$RESULTS" --dry_run \
    | sed -n '/^Estimate$/,$p' > "$OUT/wall_times.md"
"$PY" examples/grid_wall_times.py "$RESULTS" >> "$OUT/wall_times.md"
echo "wrote $OUT"
