#!/usr/bin/env bash
# What docs/results/e5-small-offline.md shows, from a finished examples/grid_e5_offline.yaml results folder:
# Tables 2, 3, 5 (+ XSR of the NLI models) with p-values, the per-layer retrieval curves, Fig. 1 for es and hi
# on held-out FLORES-101 devtest pairs, the measured wall time of every step kind, and (where an fp32 run of
# the NLI and retrieval cells exists, see the results page) fp32 against bf16 next to the seed spread.
#
#   bash examples/grid_e5_offline_publish.sh [RESULTS_DIR] [OUT_DIR] [FP32_CELLS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-outputs/grid-e5-offline-bf16}
OUT=${2:-docs/results/e5-small-offline}
FP32_CELLS=${3:-outputs/grid-e5-offline-fp32-cells}
PY=${PYTHON:-.venv/bin/python}
FLORES=../shared/data/parallel/flores101_devtest
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

# Tables (WikiANN's XTREME test files have no labels: NER is scored on the dev sets, split "eval")
"$PY" -m hf_xladjust.report "$RESULTS" --split test ner=eval --output_dir "$OUT"

# Fig. 1: the five model states of seed 0, on held-out pairs aligned here (never trained on)
for pair in es:spa hi:hin; do
    lang=${pair%%:*} code=${pair##*:}
    [ -f "$RESULTS/fig1/$lang/distances.json" ] ||  # measured already: delete the folder to measure again
    "$PY" -m hf_xladjust.evaluation.distances --results_dir "$RESULTS" --lang "$lang" --results_seed 0 --task nli \
        --source_file "$FLORES/eng.devtest" --target_file "$FLORES/$code.devtest" --target_lang "$lang" \
        --max_sentences 500 \
        --device cpu --output_dir "$RESULTS/fig1/$lang"
    cp "$RESULTS/fig1/$lang/distances.png" "$OUT/fig1_$lang.png"
    cp "$RESULTS/fig1/$lang/distances.json" "$OUT/fig1_$lang.json"
done

# Measured wall time per step kind (from each step's _SUCCESS.json), and the grid's span
"$PY" -m hf_xladjust.experiments examples/grid_e5_offline.yaml --results_dir "$RESULTS" --dry_run \
    | sed -n '/^Estimate$/,$p' > "$OUT/wall_times.md"
"$PY" examples/grid_wall_times.py "$RESULTS" >> "$OUT/wall_times.md"
if [ -d "$FP32_CELLS" ]; then
    "$PY" examples/grid_precision_cells.py "$RESULTS" "$FP32_CELLS" > "$OUT/precision_cells.md"
fi
echo "wrote $OUT"
