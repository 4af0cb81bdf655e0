"""Local dataset repositories laid out as the Hub serves today's parquet datasets, built from our fixtures.

One folder per config holding `<split>-00000-of-00001.parquet`, and a README.md whose YAML header declares
`configs:` (config_name, data_files per split) and `dataset_info:` (features, ClassLabel names, split sizes),
as the dataset cards of facebook/xnli, unimelb-nlp/wikiann, rajpurkar/squad, google/xtreme and
Helsinki-NLP/opus-100 do. The real `datasets.load_dataset(folder, config, split=...)` reads them: nothing
is faked. The features follow the cards (see HUB_DATASETS in ../shared and the pages cited in the code).
"""
from dataclasses import replace
from pathlib import Path
from typing import Dict, Sequence

import datasets
import yaml

from hf_xladjust.tasks.ner import LABELS as NER_TAGS
from hf_xladjust.tasks.ner import read_ner_tsv
from hf_xladjust.tasks.qa import examples_to_columns, read_squad_json
from hf_xladjust.tasks.xnli import LABELS as NLI_LABELS
from hf_xladjust.tasks.xnli import read_xnli_tsv

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def write_repo(folder, configs: Dict[str, Dict[str, datasets.Dataset]]) -> str:
    """Write `configs` ({config: {split: Dataset}}) as a Hub-shaped repository in `folder`; returns its path."""
    folder = Path(folder)
    card = {"configs": [], "dataset_info": []}
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    for config, splits in configs.items():
        (folder / config).mkdir(parents=True, exist_ok=True)
        for split, data in splits.items():
            data.to_parquet(str(folder / config / f"{split}-00000-of-00001.parquet"))
        features = next(iter(splits.values())).features
        card["configs"].append({"config_name": config,
                                "data_files": [{"split": s, "path": f"{config}/{s}-*"} for s in splits]})
        card["dataset_info"].append({"config_name": config, "features": features._to_yaml_list(),
                                     "splits": [{"name": s, "num_bytes": d.data.nbytes, "num_examples": len(d)}
                                                for s, d in splits.items()]})
    if bars:
        datasets.enable_progress_bars()
    (folder / "README.md").write_text("---\n" + yaml.safe_dump(card, sort_keys=False, allow_unicode=True)
                                      + "---\n# A local copy laid out as the Hub serves it (tests only)\n",
                                      encoding="utf-8")
    return str(folder)


# --- splits with the cards' features -----------------------------------------------------------------

def nli_split(examples) -> datasets.Dataset:
    """facebook/xnli, a language config: premise, hypothesis, label ClassLabel (entailment, neutral, contradiction)."""
    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=list(NLI_LABELS))})
    return datasets.Dataset.from_dict({"premise": [e.premise for e in examples],
                                       "hypothesis": [e.hypothesis for e in examples],
                                       "label": [e.label for e in examples]}, features=features)


def ner_split(examples, lang: str, names: Sequence[str] = NER_TAGS, spans: bool = True) -> datasets.Dataset:
    """unimelb-nlp/wikiann (tokens, ner_tags, langs, spans) or, without `spans`, google/xtreme PAN-X.{lang}."""
    columns = {"tokens": [e.tokens for e in examples],
               "ner_tags": [[list(names).index(t) for t in e.tags] for e in examples],
               "langs": [[lang] * len(e.tokens) for e in examples]}
    features = {"tokens": datasets.List(datasets.Value("string")),
                "ner_tags": datasets.List(datasets.ClassLabel(names=list(names))),
                "langs": datasets.List(datasets.Value("string"))}
    if spans:
        columns["spans"] = [[] for _ in examples]
        features["spans"] = datasets.List(datasets.Value("string"))
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def qa_split(examples) -> datasets.Dataset:
    """The `squad` layout of rajpurkar/squad and google/xtreme's QA configs: id, title, context, question,
    answers {text: list of string, answer_start: list of int32}."""
    features = datasets.Features({
        "id": datasets.Value("string"), "title": datasets.Value("string"), "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": {"text": datasets.List(datasets.Value("string")),
                    "answer_start": datasets.List(datasets.Value("int32"))}})
    return datasets.Dataset.from_dict(examples_to_columns(examples), features=features)


def tatoeba_split(sources, targets, lang3: str) -> datasets.Dataset:
    """google/xtreme tatoeba.{lang3}: source_sentence (the language), target_sentence (English), newline kept."""
    return datasets.Dataset.from_dict({"source_sentence": [s + "\n" for s in sources],
                                       "target_sentence": [t + "\n" for t in targets],
                                       "source_lang": [lang3] * len(sources), "target_lang": ["eng"] * len(sources)})


def translation_split(pairs, languages=("en", "es")) -> datasets.Dataset:
    """Helsinki-NLP/opus-100, config en-es: translation {en, es}."""
    features = datasets.Features({"translation": datasets.Translation(languages=list(languages))})
    return datasets.Dataset.from_dict({"translation": [dict(zip(languages, p)) for p in pairs]}, features=features)


def squad_examples(path):
    return read_squad_json(str(path))[0]


# --- the repositories the toolkit documents, from the project's fixtures --------------------------------

def fixture_lines(lang):
    return (FIXTURES / f"{lang}.txt").read_text(encoding="utf-8").splitlines()


def build_all(root) -> Dict[str, str]:
    """Every Hub id the toolkit documents -> a local repository of it (small: tests/fixtures, examples/demo_xnli)."""
    root = Path(root)
    demo = ROOT / "examples" / "demo_xnli"
    xnli = {"en": {"train": nli_split(read_xnli_tsv(str(demo / "train-en.tsv"))),
                   "test": nli_split(read_xnli_tsv(str(demo / "test-en.tsv")))},
            "es": {"test": nli_split(read_xnli_tsv(str(demo / "test-es.tsv")))}}
    ner = FIXTURES / "ner"

    def wikiann(lang, spans):
        splits = {"validation": ner_split(read_ner_tsv(str(ner / f"dev-{lang}.tsv"), lang=lang), lang, spans=spans)}
        splits["test"] = splits["validation"]
        if lang == "en":
            splits["train"] = ner_split(read_ner_tsv(str(ner / "train-en.tsv"), lang=lang), lang, spans=spans)
        return splits

    qa = FIXTURES / "qa"
    xtreme = {f"PAN-X.{lang}": wikiann(lang, False) for lang in ("en", "es", "ru")}
    xtreme.update({f"XQuAD.{lang}": {"validation": qa_split(squad_examples(qa / f"xquad.{lang}.json"))}
                   for lang in ("en", "es", "ru")})
    for path in sorted((qa / "mlqa" / "dev").glob("dev-context-*-question-*.json")):
        _, _, context, _, question = path.stem.split("-")
        split = qa_split(squad_examples(path))
        xtreme[f"MLQA.{context}.{question}"] = {"validation": split, "test": split}
    # TyDi QA GoldP: one validation split for every language, told apart by the id's prefix (our Russian
    # fixture has no gold answers, so neither do the English questions added beside it)
    tydi = [replace(ex, answers=[], answer_starts=[]) for ex in squad_examples(qa / "tydiqa.goldp.ru.dev.json")]
    tydi += [replace(ex, id=f"english-{ex.id}", answers=[], answer_starts=[])
             for ex in squad_examples(qa / "xquad.en.json")]
    xtreme["tydiqa"] = {"train": qa_split(squad_examples(qa / "train.json")), "validation": qa_split(tydi)}
    for lang, lang3 in (("es", "spa"), ("ru", "rus")):
        xtreme[f"tatoeba.{lang3}"] = {"validation": tatoeba_split(fixture_lines(lang), fixture_lines("en"), lang3)}
    squad = {"plain_text": {"train": qa_split(squad_examples(qa / "train.json")),
                            "validation": qa_split(squad_examples(qa / "train.json"))}}
    opus = {"en-es": {"train": translation_split(list(zip(fixture_lines("en"), fixture_lines("es"))))}}
    repos = {"facebook/xnli": xnli, "unimelb-nlp/wikiann": {lang: wikiann(lang, True) for lang in ("en", "es", "ru")},
             "rajpurkar/squad": squad, "google/xtreme": xtreme, "Helsinki-NLP/opus-100": opus}
    return {name: write_repo(root / name, configs) for name, configs in repos.items()}


def card_header(repo) -> dict:
    """The YAML header of a repository's README.md."""
    text = (Path(repo) / "README.md").read_text(encoding="utf-8")
    return yaml.safe_load(text.split("---\n")[1])

