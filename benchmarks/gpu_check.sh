#!/usr/bin/env bash
# The GPU check, for when a device is lent: at most 8 minutes on one H100/H200, no Hub, writes one JSON.
#
#   bash benchmarks/gpu_check.sh [OUTPUT.json]      # default: $OUT/gpu_check.json, else outputs/gpu_check.json
#
# 1. the adjustment, continual and retrieval benchmarks at mBERT-base size (12 x 768, 119,547-piece vocabulary,
#    random weights from a config; the retrieval one trains its WordPiece tokenizer on the fly) in bf16;
# 2. one tiny grid end to end on cuda (alignment, adjustment, NLI original/adjusted/continual, report) on the
#    demo data, with a tiny random BERT, in bf16;
# 3. the adjustment and continual steps under torch.cuda.set_sync_debug_mode("error") (benchmarks/gpu_sync_check.py):
#    no step may synchronise with the host.
# Needs a CUDA build of torch in $PYTHON (default .venv/bin/python; the package's own dependencies, eflomal for
# the grid). Without a CUDA device it stops at once, saying so. Each part has its own time limit, and a part that
# fails or times out is recorded in the JSON (exit status 1) without stopping the others.
# GPU_CHECK_DRY_RUN=1 runs the same parts on the CPU at toy sizes (nothing is measured), with 10x the time
# limits (GPU_CHECK_LIMIT_SCALE): to test this script.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
RESULT=${1:-${OUT:+$OUT/gpu_check.json}}
RESULT=${RESULT:-$ROOT/outputs/gpu_check.json}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
MBERT="--layers 12 --hidden 768 --vocab 119547"
DEVICE=cuda
SYNC_ARGS=""
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
  MBERT="--layers 2 --hidden 64 --vocab 2000"
  DEVICE=cpu
  SYNC_ARGS="--cpu_dry_run"
  LIMIT_SCALE=${GPU_CHECK_LIMIT_SCALE:-10}  # a shared CPU is far slower than the GPU the limits are set for
fi
LIMIT_SCALE=${LIMIT_SCALE:-${GPU_CHECK_LIMIT_SCALE:-1}}

if [ ! -x "$PYTHON" ]; then
  echo "gpu_check.sh: no Python at $PYTHON (set PYTHON=...; the venv must hold torch with CUDA and this package's dependencies)" >&2
  exit 2
fi
if [ "$DEVICE" = cuda ] && ! "$PYTHON" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check.sh: no CUDA device: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees none; "
             "run this on a GPU machine with a CUDA build of torch")
print(f"gpu_check.sh: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
then
  exit 2
fi
mkdir -p "$(dirname "$RESULT")"
START=$(date +%s)

# run NAME SECONDS COMMAND...: output to $WORK/NAME.log, status and time to $WORK/NAME.status
run() {
  local name=$1 limit=$(( $2 * LIMIT_SCALE ))
  shift 2
  local t0=$(date +%s)
  echo "=== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  echo "$rc $(( $(date +%s) - t0 ))" >"$WORK/$name.status"
  tail -n 8 "$WORK/$name.log"
  echo "--- $name: exit $rc in $(( $(date +%s) - t0 )) s"
}

# 1. benchmarks at mBERT-base size, bf16
run bench_adjust 50 "$PYTHON" benchmarks/bench_adjust.py $MBERT --device $DEVICE --amp bf16 --repeats 10
run bench_continual 70 "$PYTHON" benchmarks/bench_continual.py $MBERT --amp bf16 --warmup 3 --repeats 10
run bench_xsr 70 "$PYTHON" benchmarks/bench_xsr.py $MBERT --device $DEVICE --amp bf16

# 2. no host synchronisation in the adjustment and continual steps
run sync_check 60 "$PYTHON" benchmarks/gpu_sync_check.py $MBERT $SYNC_ARGS --output "$WORK/sync_check.json"

# 3. a tiny grid end to end on cuda: a random 2-layer BERT with a WordPiece tokenizer over the demo corpus
cat >"$WORK/grid.yaml" <<EOF
model_name_or_path: $WORK/tiny-bert
results_dir: $WORK/grid
languages: [es]
seeds: 1
regimes: [original, adjusted, adjusted_cont]
parallel:
  es: $ROOT/demo_data/en-es.txt
alignment:
  mode: shared
  args: {max_sentences: 250}
adjust:
  args: {num_train_epochs: 1, per_device_train_batch_size: 32}
  resources: {gpus: 1, hours: 1}
common_args: {bf16: true, report_to: none, disable_tqdm: true}
tasks:
  nli:
    args:
      train_file: $ROOT/examples/demo_xnli/train-en.tsv
      test_file_pattern: "$ROOT/examples/demo_xnli/test-{lang}.tsv"
      num_train_epochs: 1
      max_seq_length: 64
    resources: {gpus: 1, hours: 1}
env: {HF_HUB_OFFLINE: "1", HF_DATASETS_OFFLINE: "1", TRANSFORMERS_OFFLINE: "1", WANDB_MODE: disabled,
      TOKENIZERS_PARALLELISM: "false"}
executor: {cluster: local}
EOF
run tiny_model 30 "$PYTHON" - "$WORK/tiny-bert" "$ROOT/demo_data/en-es.txt" <<'EOF'
import sys
from tokenizers import BertWordPieceTokenizer
from transformers import BertConfig, BertModel, BertTokenizerFast

out, corpus = sys.argv[1], sys.argv[2]
text = [s for line in open(corpus, encoding="utf-8") for s in line.split("|||")]
wp = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
wp.train_from_iterator(text, vocab_size=2000, min_frequency=1, show_progress=False)
tok = BertTokenizerFast(tokenizer_object=wp._tokenizer, model_max_length=128)
BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=128)).save_pretrained(out)
tok.save_pretrained(out)
print(f"tiny BERT with a {tok.vocab_size}-piece vocabulary in {out}")
EOF
run grid 150 "$PYTHON" -m hf_xladjust.experiments "$WORK/grid.yaml"
run grid_report 30 "$PYTHON" -m hf_xladjust.report "$WORK/grid"

# one JSON: every part's status, time and output tail, the sync check's result, the grid's precision records
"$PYTHON" - "$WORK" "$RESULT" "$START" "$DEVICE" <<'EOF'
import glob
import json
import os
import sys
import time

import torch

work, result, start, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
parts = {}
for status in sorted(glob.glob(os.path.join(work, "*.status"))):
    name = os.path.basename(status)[:-len(".status")]
    rc, seconds = open(status).read().split()
    with open(os.path.join(work, name + ".log"), errors="replace") as f:
        lines = f.read().splitlines()
    parts[name] = {"exit": int(rc), "seconds": int(seconds), "output_tail": lines[-25:]}
sync = os.path.join(work, "sync_check.json")
precision = {}
for path in glob.glob(os.path.join(work, "grid", "**", "run_args.json"), recursive=True):
    record = json.load(open(path)).get("precision")
    if record is None:  # the alignment step: no model runs there
        continue
    precision[os.path.relpath(os.path.dirname(path), os.path.join(work, "grid"))] = record
report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (GPU_CHECK_DRY_RUN)", "torch": torch.__version__, "cuda": torch.version.cuda,
          "wall_seconds": int(time.time()) - start, "ok": all(p["exit"] == 0 for p in parts.values()),
          "parts": parts, "sync_check": json.load(open(sync)) if os.path.exists(sync) else None,
          "grid_precision": precision,
          "grid_on_cuda_bf16": bool(precision) and all(
              r.get("device") == device and r.get("precision") == "bf16" for r in precision.values())}
with open(result, "w") as f:
    json.dump(report, f, indent=2)
print(f"gpu_check.sh: {'all parts passed' if report['ok'] else 'SOME PARTS FAILED'} in {report['wall_seconds']} s; "
      f"grid on {device} in bf16: {report['grid_on_cuda_bf16']}; wrote {result}")
sys.exit(0 if report["ok"] and report["grid_on_cuda_bf16"] else 1)
EOF
