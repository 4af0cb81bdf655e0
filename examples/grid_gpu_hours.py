#!/usr/bin/env python
"""The GPU-hours of examples/grid_paper.yaml on one A100 (bf16), derived from FLOPs: NOT measured.

Work per step (examples x epochs x padded tokens, counted on the data in ../shared/data with an XLM-R
tokenizer: XNLI pairs 43.7 tokens, 73.3 padded in random batches of 32 (XNLI dev-en standing in for
MultiNLI); SQuAD 1.038 windows a question at 384/128, 376 padded; WikiANN 41.6 padded; parallel sentences
~70 padded, WikiMatrix-like) times FLOPs per token of mBERT-base (85M non-embedding parameters: 6N for
training, 2N forward, plus attention), divided by an ASSUMED sustained throughput, plus assumed fixed costs
per optimisation step and per run. Every assumption is a constant below; change them for other hardware.

    python examples/grid_gpu_hours.py
"""
N, LAYERS, HIDDEN = 85e6, 12, 768       # mBERT-base without embeddings
BIG, SMALL, EVAL = 125e12, 62e12, 125e12  # assumed sustained FLOP/s: >= 8K tokens a step, ~2K, forward only
STEP_OVERHEAD = 0.025                    # s per optimisation step (AdamW over 178M parameters, launches)
SIDE_OVERHEAD = 0.015                    # s per continual side batch (its own launches)
SETUP_TRAIN, SETUP_EVAL = 180, 60        # s per run: loading, tokenising, writing
QA_POST = 0.003                          # s of CPU post-processing per question
SEEDS, LANGS = 5, 4


def train_flops(tokens, length):
    return tokens * (6 * N + 12 * LAYERS * length * HIDDEN)


def forward_flops(tokens, length):
    return tokens * (2 * N + 4 * LAYERS * length * HIDDEN)


def side_batches(steps):
    """Continual learning: 16 sentence pairs (32 sentences, ~70 padded tokens) trained, f0 on 16, per step."""
    return (train_flops(steps * 32 * 70, 70) / SMALL + forward_flops(steps * 16 * 70, 70) / EVAL
            + steps * SIDE_OVERHEAD)


def seconds():
    rows = {}
    steps = 30000 / 32  # adjustment: 30K pairs, one epoch, both sides trained, f0 on the English side
    rows["adjust"] = (SETUP_TRAIN + train_flops(60000 * 70, 70) / SMALL + forward_flops(30000 * 70, 70) / EVAL
                      + steps * STEP_OVERHEAD)
    steps = 392702 / 32 * 2  # MultiNLI, 2 epochs; XNLI test 5,010 pairs a set (~80 tokens padded at batch 256)
    train = train_flops(392702 * 2 * 73.3, 73.3) / SMALL + steps * STEP_OVERHEAD
    rows["nli/original (all languages)"] = SETUP_TRAIN + train + forward_flops(9 * 5010 * 80, 80) / EVAL
    rows["nli/adjusted"] = SETUP_TRAIN + train + forward_flops(3 * 5010 * 80, 80) / EVAL
    rows["nli/adjusted_cont"] = rows["nli/adjusted"] + side_batches(steps)
    steps = 20000 / 32 * 3  # WikiANN en 20K, 3 epochs; ~41K / ~20K sentences evaluated
    train = train_flops(20000 * 3 * 41.6, 41.6) / SMALL + steps * STEP_OVERHEAD
    rows["ner/original (all languages)"] = SETUP_TRAIN + train + forward_flops(41000 * 40, 40) / EVAL
    rows["ner/adjusted"] = SETUP_TRAIN + train + forward_flops(20000 * 40, 40) / EVAL
    rows["ner/adjusted_cont"] = rows["ner/adjusted"] + side_batches(steps)
    windows = 87599 * 1.038  # SQuAD, 2 epochs; XQuAD + MLQA (+ cross-lingual) + TyDi: ~90K / ~20K questions
    steps = windows / 32 * 2
    train = train_flops(windows * 2 * 376, 376) / BIG + steps * STEP_OVERHEAD

    def qa_eval(questions):
        return forward_flops(questions * 1.4 * 384, 384) / EVAL + questions * QA_POST
    rows["qa/original (all languages)"] = SETUP_TRAIN + train + qa_eval(90000)
    rows["qa/adjusted"] = SETUP_TRAIN + train + qa_eval(20000)
    rows["qa/adjusted_cont"] = rows["qa/adjusted"] + side_batches(steps)
    rows["xsr/original (all languages)"] = SETUP_EVAL + forward_flops(8000 * 40, 40) / EVAL  # Tatoeba, 2K a language
    rows["xsr/adjusted"] = rows["xsr/adjusted_cont"] = SETUP_EVAL + forward_flops(2000 * 40, 40) / EVAL
    return rows


def main():
    rows = seconds()
    print("| step kind | steps | A100 hours a step | GPU-hours |\n| --- | ---: | ---: | ---: |")
    totals = {}
    for kind, sec in rows.items():
        n = SEEDS if "original" in kind else SEEDS * LANGS
        hours = sec / 3600
        totals[kind.split("/")[0]] = totals.get(kind.split("/")[0], 0) + hours * n
        print(f"| {kind} | {n} | {hours:.2f} | {hours * n:.1f} |")
    print("\nper task: " + ", ".join(f"{k} {v:.1f}" for k, v in totals.items())
          + f"; total {sum(totals.values()):.1f} A100 GPU-hours (estimated, not measured)")


if __name__ == "__main__":
    main()
