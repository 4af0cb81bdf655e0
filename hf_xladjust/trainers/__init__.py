"""Trainer subclasses: stage-1 adjustment and continual alignment during fine-tuning (imported on first use)."""
from hf_xladjust.lazy import lazy_exports

_EXPORTS = {
    "hf_xladjust.trainers.adjust": ("AdjustTrainer", "AdjustTrainingArguments"),
    "hf_xladjust.trainers.continual": ("ContinualAlignTrainer", "ContinualAlignArguments", "ContinualAlignmentError",
                                       "FineTuningArguments", "continual_kwargs"),
    "hf_xladjust.trainers.qa": ("QuestionAnsweringTrainer",),
    "hf_xladjust.trainers.base": ("MetricsLoggingTrainer",),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
