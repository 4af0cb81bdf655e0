"""Trainer subclasses: stage-1 adjustment and continual alignment during fine-tuning (imported on first use)."""
import importlib

_EXPORTS = {
    "hf_xladjust.trainers.adjust": ("AdjustTrainer", "AdjustTrainingArguments"),
    "hf_xladjust.trainers.continual": ("ContinualAlignTrainer", "ContinualAlignArguments", "ContinualAlignmentError",
                                       "FineTuningArguments", "continual_kwargs"),
    "hf_xladjust.trainers.qa": ("QuestionAnsweringTrainer",),
    "hf_xladjust.trainers.base": ("MetricsLoggingTrainer",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
