"""Model cards and Hub pushes: the last step of every run_*.py, as the HF example scripts end.

`save_model_card(trainer, ...)` writes README.md in the output folder: the Trainer's own card
(`Trainer.create_model_card`: metadata, hyper-parameters, training results) followed by a section of
ours, read back from the run's run_args.json and alignment_stats.json (and, when the run started from a
run_adjust.py output, from that folder's): base model, languages, parallel corpus and its counts,
objective and weights, seeds, and how to cite the paper and Cao et al. With `--push_to_hub` it then
pushes as the HF examples do (`trainer.push_to_hub(**card_kwargs)`, which re-saves the model and the
card and uploads the folder to `--hub_model_id`).

The push comes after everything is saved locally. If it fails (no network, HF_HUB_OFFLINE=1, no
token), the script stops with ONE line naming the folder and the reason (exit status 1, through
`hf_xladjust.cli.run_main`): the run asked for a push that did not happen, so it must not look like a
success; the folder is complete and can be uploaded later (`hf upload REPO_ID OUTPUT_DIR`).
`HubPushAtEnd` (mixed into every Trainer of this package) keeps a Hub that cannot be reached when the
Trainer is built from stopping the run before training, and keeps `save_model()` from pushing midway.
"""
import json
import logging
import os
import re
import sys
from typing import Any, Dict, List, Optional

from hf_xladjust.errors import InputError

logger = logging.getLogger(__name__)

TAGS = ["hf-xladjust", "cross-lingual-adjustment"]

CITATION = """```bibtex
@inproceedings{efimov2023impact,
  title     = {The Impact of Cross-Lingual Adjustment of Contextual Word Representations on Zero-Shot Transfer},
  author    = {Efimov, Pavel and Boytsov, Leonid and Arslanova, Elena and Braslavski, Pavel},
  booktitle = {Advances in Information Retrieval: 45th European Conference on Information Retrieval (ECIR 2023)},
  year      = {2023}
}

@inproceedings{cao2020multilingual,
  title     = {Multilingual Alignment of Contextual Word Representations},
  author    = {Cao, Steven and Kitaev, Nikita and Klein, Dan},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2020}
}
```"""

FROM_SCRATCH = "This model was trained from scratch on "


class HubPushAtEnd:
    """Trainer mixin for `--push_to_hub` runs. The HF Trainer creates the Hub repository when it is built and
    dies there when the Hub cannot be reached; here that failure is logged (info) and the repository is
    created by the final push instead (`save_model_card`), which reports a failure in one line once
    everything is saved. Checkpoint pushes during training (`--hub_strategy`) happen when the repository
    could be created, as in the HF Trainer. `save_model()` never pushes: the final push does."""

    def __init__(self, *args, **kwargs):
        self._hub_repo_at_init = True
        try:
            super().__init__(*args, **kwargs)
        finally:
            self._hub_repo_at_init = False

    def init_hf_repo(self, *args, **kwargs):  # (token) before transformers 4.47, (token, private) since
        if not getattr(self, "_hub_repo_at_init", False):
            return super().init_hf_repo(*args, **kwargs)
        try:
            super().init_hf_repo(*args, **kwargs)
        except Exception as err:  # offline, no token, no network: the final push retries and reports it
            self.hub_model_id, self.push_in_progress = None, None
            logger.info("Hub repository not created now (%s: %s); the push at the end of the run retries",
                        type(err).__name__, err)

    def _push_from_checkpoint(self, checkpoint_folder):
        if self.hub_model_id is None:  # the repository could not be created: nothing to push to yet
            return
        return super()._push_from_checkpoint(checkpoint_folder)

    def save_model(self, output_dir=None, _internal_call=False):
        super().save_model(output_dir, _internal_call=True)


def _read_json(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _is_local(name: Optional[str]) -> bool:
    return bool(name) and (os.path.isdir(name) or name.startswith((".", "/", "~")))


def _code(value) -> str:
    return f"`{value}`"


def languages_of(run_args: Dict[str, Any]) -> List[str]:
    """The languages a run touched (English first when present): corpus sides, training and evaluation."""
    found: List[str] = []
    alignment = run_args.get("alignment") or {}
    data = run_args.get("data") or {}
    candidates = ["en", alignment.get("source_lang"), alignment.get("target_lang"),
                  *[spec.split("=", 1)[0] for spec in alignment.get("parallel") or []],
                  data.get("train_language"), *(data.get("eval_languages") or []), *(data.get("languages") or []),
                  data.get("source_lang"), data.get("target_lang")]
    for lang in candidates:
        if lang and lang not in found:
            found.append(lang)
    return found if len(found) > 1 else []


def corpus_lines(alignment: Dict[str, Any], stats: Dict[str, Any]) -> List[str]:
    """The parallel corpus and what was kept of it (alignment_stats.json)."""
    if alignment.get("parallel"):
        files = ", ".join(_code(spec) for spec in alignment["parallel"])
    else:
        files = " + ".join(_code(f) for f in (alignment.get("source_file"), alignment.get("target_file"),
                                               alignment.get("train_file")) if f) or "n/a"
    aligner = alignment.get("aligner")
    if aligner == "pharaoh":
        aligner = f"precomputed links {_code(alignment.get('alignment_file') or alignment.get('alignment_files'))}"
    lines = [f"- **Parallel corpus**: {files} (English side: {stats.get('english_side', 'source')}; aligner: "
             f"{aligner}; at most {alignment.get('max_sentences')} sentence pairs sampled, "
             f"at most {alignment.get('max_words')} words a side)"]
    if stats:
        per_language = stats.get("languages") or {}
        counts = (f"{stats.get('sentences_kept')} sentence pairs and {stats.get('links_kept')} word links kept")
        if "sentences_in_corpus" in stats:
            counts += f" of {stats['sentences_in_corpus']} sentence pairs in the corpus"
        extra = [f"{stats[k]} {label}" for k, label in (("links_special_tokens", "CLS/SEP links added"),
                                                        ("links_truncated", "links lost to truncation"))
                 if k in stats]
        lines.append(f"- **Aligned data** (alignment_stats.json): {counts}" + (f"; {', '.join(extra)}" if extra
                                                                                   else ""))
        for lang, s in per_language.items():
            lines.append(f"  - {lang}: {s.get('sentences_kept')} sentence pairs, {s.get('links_kept')} word links "
                         f"of {s.get('sentences_in_corpus')} sentence pairs in the corpus")
    return lines


def objective_line(loss: Dict[str, Any], align_weight: float = 1.0, anchor_path: Optional[str] = None,
                   equation: str = "Eq. 1") -> str:
    """The alignment objective and its weights."""
    pull = ("symmetric InfoNCE over the batch's linked words, τ = {}".format(loss.get("align_temperature"))
            if loss.get("align_objective") == "contrastive"
            else f"mean squared distance, towards the {loss.get('pull_target', 'current')} English vector")
    sub = f"; sums over sub-batches of {loss['sub_batch_size']}" if loss.get("sub_batch_size") else ""
    f0 = f" f0 = {_code(anchor_path)}" if anchor_path else " f0"
    return (f"- **Objective** ({equation}): pull term ({pull}) × α = {align_weight} + anchor term (English words "
            f"near the original model{f0}) × {loss.get('anchor_weight')}; word vectors: {loss.get('pooling')} of "
            f"subwords at hidden layer {loss.get('align_layer')}{sub}")


def adjustment_lines(run_args: Dict[str, Any], stats: Dict[str, Any], head: Optional[str] = None) -> List[str]:
    """What a run_adjust.py run did, from its run_args.json and alignment_stats.json."""
    model = (run_args.get("model") or {}).get("model_name_or_path")
    training = run_args.get("training") or {}
    lines = [f"- **Base model**: {_code(model)}"]
    langs = languages_of(run_args)
    if langs:
        lines.append(f"- **Languages**: {', '.join(langs)} (English is anchored to the original model)")
    lines += corpus_lines(run_args.get("alignment") or {}, stats)
    lines.append(objective_line(run_args.get("loss") or {}, 1.0, model))
    steps = f"{training.get('max_steps')} step(s)" if (training.get("max_steps") or -1) > 0 else \
        f"{training.get('num_train_epochs')} epoch(s)"
    lines.append(f"- **Optimisation**: Adam β2 = {training.get('adam_beta2')}, ε = {training.get('adam_epsilon')}, "
                 f"lr {training.get('learning_rate')} ({training.get('lr_scheduler_type')}), "
                 f"{training.get('per_device_train_batch_size')} sentence pairs per device and step, {steps}")
    lines.append(f"- **Seed**: {training.get('seed')} (sampling of the corpus, alignment and training)")
    if head:
        lines.append(f"- **Saved**: {head}")
    return lines


def _head_of(output_dir: str) -> Optional[str]:
    architectures = _read_json(os.path.join(output_dir, "config.json")).get("architectures") or []
    if not architectures:
        return None
    name = architectures[0]
    if name.endswith(("ForMaskedLM", "ForPreTraining")):
        return f"the whole `{name}`, its pretraining head kept (fill-mask works; `--save_encoder_only` drops it)"
    return f"the encoder alone (`{name}`)"


def our_section(output_dir: str, script: str, trainer=None) -> str:
    """Our part of the card: what the run did, for the cross-lingual adjustment, and how to cite it."""
    run_args = _read_json(os.path.join(output_dir, "run_args.json"))
    title = "## Cross-lingual adjustment (hf-xladjust)"
    lines = [title, "", f"Made with `{script}` of hf-xladjust, a HuggingFace Trainer toolkit for the cross-lingual "
             "adjustment of Efimov et al. (ECIR 2023), after Cao et al. (ICLR 2020). Everything below is read from "
             "the run's `run_args.json` and `alignment_stats.json` (this folder's, or those of the adjusted model "
             "it started from).", ""]
    if run_args.get("alignment") and "continual" not in run_args:  # run_adjust.py
        lines += adjustment_lines(run_args, _read_json(os.path.join(output_dir, "alignment_stats.json")),
                                  _head_of(output_dir))
    else:
        base = (run_args.get("model") or {}).get("model_name_or_path")
        training = run_args.get("training") or {}  # run_xsr.py trains nothing: no seed to report
        lines.append(f"- **{'Model evaluated' if 'retrieval' in run_args else 'Base model'}**: {_code(base)}")
        langs = languages_of(run_args)
        if langs:
            lines.append(f"- **Languages**: {', '.join(langs)}")
        data = run_args.get("data") or {}
        sources = data.get("dataset_name") or data.get("tatoeba_dir") or data.get("train_file") \
            or data.get("source_file")
        if sources:
            lines.append(f"- **Data**: {_code(sources)}")
        base_args = _read_json(os.path.join(base, "run_args.json")) if _is_local(base) else {}
        if base_args.get("alignment") and base_args.get("loss") and not base_args.get("continual"):
            lines.append(f"- **The base model is an adjusted model** ({_code(base)}, run_adjust.py):")
            lines += ["  " + line for line in adjustment_lines(
                base_args, _read_json(os.path.join(base, "alignment_stats.json")))]
        continual = run_args.get("continual")
        if continual:
            from hf_xladjust.alignment.anchor import resolve_anchor_path

            anchor = resolve_anchor_path(base, continual.get("anchor_model_name_or_path"))
            lines.append(f"- **Continual alignment** (Eq. 2: task loss + α·pull + w·anchor): one side batch of "
                         f"{continual.get('align_batch_size')} aligned sentence pairs per optimisation step")
            pool = getattr(trainer, "align_dataset", None)
            if pool is not None:
                words = sum(len(pair.links) for pair in pool.pairs)  # word links, before truncation
                lines.append(f"  - pool: {len(pool)} sentence pairs, {words} word links"
                             + (f" from {_code(continual.get('aligned_pairs'))}" if continual.get("aligned_pairs")
                                else ""))
            if not continual.get("aligned_pairs"):
                lines += ["  " + line for line in corpus_lines(
                    {**(run_args.get("alignment") or {}),
                     "source_file": continual.get("align_source_file"),
                     "target_file": continual.get("align_target_file"),
                     "train_file": continual.get("align_train_file")}, {})]
            lines.append("  " + objective_line(run_args.get("loss") or {}, continual.get("align_weight"), anchor,
                                               equation="Eq. 2"))
        if "seed" in training:
            lines.append(f"- **Seed**: {training.get('seed')}")
    lines += ["", "### Citation", "", "If you use this model, please cite the paper and Cao et al.:", "", CITATION, ""]
    return "\n".join(lines)


def _card_without_trainer(output_dir: str, language: Optional[List[str]], finetuned_from: Optional[str],
                          dataset: Optional[str], base: Optional[str]) -> str:
    """The front matter and opening of a card for an output folder without a Trainer (run_xsr.py)."""
    import yaml

    meta: Dict[str, Any] = {"tags": list(TAGS)}
    if language:
        meta["language"] = language
    if finetuned_from:
        meta["base_model"] = finetuned_from
    results = _read_json(os.path.join(output_dir, "all_results.json"))
    name = os.path.basename(os.path.abspath(output_dir))
    body = [f"# {name}", "", f"Evaluation of `{finetuned_from or base}`"
            + (f" on {dataset}" if dataset else "") + ". Results (all_results.json):", ""]
    body += [f"- {k}: {round(v, 4) if isinstance(v, float) else v}" for k, v in results.items()
             if not re.search(r"_layer\d+$", k)]  # the best layer's scores, not every layer's
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + "\n".join(body) + "\n"


def card_kwargs_for(output_dir: str, **card_kwargs) -> Dict[str, Any]:
    """`create_model_card` keyword arguments with our defaults: tags, languages, the base model when it is a
    Hub name (a local folder is named in our section instead), the task from the saved architecture."""
    run_args = _read_json(os.path.join(output_dir, "run_args.json"))
    base = (run_args.get("model") or {}).get("model_name_or_path")
    kwargs = {"tags": list(TAGS), "language": languages_of(run_args) or None,
              "finetuned_from": None if _is_local(base) else base, **card_kwargs}
    alignment = run_args.get("alignment") or {}
    if "dataset" not in kwargs and alignment and "continual" not in run_args:  # run_adjust.py: its corpus
        files = alignment.get("parallel") or [os.path.basename(f) for f in (
            alignment.get("source_file"), alignment.get("target_file"), alignment.get("train_file")) if f]
        kwargs["dataset"] = f"{' + '.join(files)} (parallel, word-aligned)"
    if "tasks" not in kwargs:
        architectures = _read_json(os.path.join(output_dir, "config.json")).get("architectures") or [""]
        kwargs["tasks"] = "fill-mask" if architectures[0].endswith(("ForMaskedLM", "ForPreTraining")) \
            else "feature-extraction"
    return kwargs


def _write_card(trainer, output_dir: str, section: str, base: Optional[str], **kwargs) -> None:
    path = os.path.join(output_dir, "README.md")
    if trainer is not None:
        with open(path, encoding="utf-8") as f:
            card = f.read()
        if kwargs.get("finetuned_from") is None and base:
            card = card.replace(FROM_SCRATCH, f"This model was trained from the local checkpoint `{base}` on ", 1)
    else:
        card = _card_without_trainer(output_dir, kwargs.get("language"), kwargs.get("finetuned_from"),
                                     kwargs.get("dataset"), base)
    with open(path, "w", encoding="utf-8") as f:
        f.write(card.rstrip("\n") + "\n\n" + section)


def save_model_card(trainer=None, output_dir: Optional[str] = None, **card_kwargs) -> None:
    """Write README.md (the Trainer's card plus `our_section`) in the output folder and, with
    `--push_to_hub`, push the folder as `trainer.push_to_hub(**card_kwargs)` does. Call it on every process
    (the push re-saves the model, a collective under FSDP/DeepSpeed), after everything else is saved.
    A failed push is an `InputError` (one line through `run_main`), raised after the card is written."""
    output_dir = output_dir or trainer.args.output_dir
    script = os.path.basename(sys.argv[0]) or "hf_xladjust"
    kwargs = card_kwargs_for(output_dir, **card_kwargs)
    base = ((_read_json(os.path.join(output_dir, "run_args.json")).get("model") or {}).get("model_name_or_path"))
    main_process = trainer is None or trainer.is_world_process_zero()
    section = our_section(output_dir, script, trainer) if main_process else ""
    if trainer is None:
        _write_card(None, output_dir, section, base, **kwargs)
        return
    original = trainer.create_model_card

    def create_model_card(**kw):  # push_to_hub rewrites the card: keep our section in it
        original(**kw)
        if trainer.is_world_process_zero():
            _write_card(trainer, output_dir, section, base, **{**kwargs, **kw})

    create_model_card(**kwargs)
    if not trainer.args.push_to_hub:
        return
    trainer.create_model_card = create_model_card
    try:
        trainer.push_to_hub(commit_message="End of training", **kwargs)
    except Exception as err:  # no network, offline mode, no token, no write access
        logger.debug("push to the Hub failed", exc_info=True)
        target = trainer.args.hub_model_id or os.path.basename(os.path.abspath(output_dir))
        raise InputError(f"--push_to_hub: pushing to {target} failed ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'no message'}); everything is saved here, "
                         f"model card included: upload it later with `hf upload {target} {output_dir}`",
                         output_dir) from None
    finally:
        del trainer.create_model_card
    logger.info("Pushed %s to the Hub (%s)", output_dir, trainer.hub_model_id)
