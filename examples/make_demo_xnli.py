#!/usr/bin/env python
"""Write the small NLI files of examples/grid_demo.yaml from the project's demo corpus demo_data/en-es.txt.

XTREME tsv (premise<TAB>hypothesis<TAB>label), made from line i of the corpus: entailment repeats the
sentence, contradiction reverses its word order, neutral pairs it with another line. The first 240 lines
give the English training set, the last 70 the line-parallel test sets in English and Spanish (so the
mixed-language sets can be built). A toy task with a known answer, for checking the pipeline, not a benchmark.

    python examples/make_demo_xnli.py [--corpus demo_data/en-es.txt] [--output_dir examples/demo_xnli]
"""
import argparse
import os

LABELS = ("entailment", "neutral", "contradiction")


def rows(sentences, indices, n):
    out = []
    for i in indices:
        label = LABELS[i % 3]
        hypothesis = {"entailment": sentences[i],
                      "neutral": sentences[(i * 7 + 3) % n],
                      "contradiction": " ".join(reversed(sentences[i].split()))}[label]
        out.append(f"{sentences[i]}\t{hypothesis}\t{label}\n")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="demo_data/en-es.txt")
    p.add_argument("--output_dir", default="examples/demo_xnli")
    p.add_argument("--train", type=int, default=240, help="Lines for the English training set; the rest test.")
    args = p.parse_args()
    with open(args.corpus, encoding="utf-8") as f:
        pairs = [line.rstrip("\n").split(" ||| ") for line in f if line.strip()]
    en, es = [p[0] for p in pairs], [p[1] for p in pairs]
    n = len(pairs)
    os.makedirs(args.output_dir, exist_ok=True)
    for name, sents, idx in (("train-en", en, range(args.train)), ("test-en", en, range(args.train, n)),
                             ("test-es", es, range(args.train, n))):
        with open(os.path.join(args.output_dir, f"{name}.tsv"), "w", encoding="utf-8", newline="\n") as f:
            f.writelines(rows(sents, idx, n))


if __name__ == "__main__":
    main()
