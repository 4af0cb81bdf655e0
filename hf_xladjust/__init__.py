"""hf-xladjust: cross-lingual adjustment of multilingual encoders as HuggingFace Trainer extensions.

The public API, for your own scripts: `from hf_xladjust import ContinualAlignTrainer, build_aligned_pairs`.
Names are imported on first use, so `import hf_xladjust` stays fast (transformers loads only when a
trainer, loss or evaluator is asked for). Every object built without arguments has the scripts' defaults.
"""
from hf_xladjust.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    # trainers and their arguments
    "hf_xladjust.trainers.adjust": ("AdjustTrainer", "AdjustTrainingArguments"),
    "hf_xladjust.trainers.continual": ("ContinualAlignTrainer", "ContinualAlignArguments", "ContinualAlignmentError",
                                       "FineTuningArguments", "continual_kwargs", "load_align_dataset"),
    "hf_xladjust.trainers.qa": ("QuestionAnsweringTrainer",),
    "hf_xladjust.trainers.base": ("MetricsLoggingTrainer",),
    # the alignment loss, aligned pairs and f0
    "hf_xladjust.alignment.loss": ("AlignmentLoss", "AlignmentLossArguments"),
    "hf_xladjust.alignment.pairs": ("AlignedPair", "AlignedPairCollator", "AlignedPairDataset",
                                    "AlignmentDataArguments", "build_aligned_pairs", "read_aligned_pairs",
                                    "write_aligned_pairs"),
    "hf_xladjust.alignment.multilingual": ("AdjustDataArguments", "build_multilingual_pairs"),
    "hf_xladjust.alignment.parallel": ("read_parallel",),
    "hf_xladjust.alignment.aligners": ("align_corpus",),
    "hf_xladjust.alignment.anchor": ("load_anchor_model", "resolve_anchor_path"),
    # realignment for today's models: LoRA, sentence-level alignment, layer freezing (docs/realignment.md)
    "hf_xladjust.alignment.realign": ("RealignmentArguments", "prepare_model"),
    "hf_xladjust.alignment.sentence": ("SentenceAlignmentLoss", "build_alignment_loss"),
    "hf_xladjust.alignment.lora": ("AdaptersOff", "save_merged"),
    "hf_xladjust.alignment.freeze": ("freeze_layers",),
    # words -> subwords for any fast tokenizer, pad-token fallback; model cards
    "hf_xladjust.tokenization": ("tokenize_running_text", "ensure_pad_token"),
    "hf_xladjust.model_card": ("save_model_card",),
    # evaluators and metrics
    "hf_xladjust.evaluation.retrieval": ("SentenceRetrievalEvaluator",),
    "hf_xladjust.evaluation.distances": ("WordDistanceEvaluator",),
    "hf_xladjust.evaluation.qa_metrics": ("qa_scores",),
    "hf_xladjust.evaluation.tagging": ("tagging_metrics",),
    # statistics
    "hf_xladjust.statistics": ("paired_ttest", "permutation_test_f1", "significance_marks", "f1_from_counts",
                               "sample_std", "reciprocal_rank_by_layer"),
    "hf_xladjust.errors": ("InputError",),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
