"""Matching a task's labels to a model config, shared by the classification and tagging tasks.

A config without real label names (a bare encoder, or a head with `LABEL_i` names) gets ours, so that
they are saved with the fine-tuned model; a config with names (an already fine-tuned model) keeps its
own ids, but its labels must be ours, else the run would score a head trained for other classes.
"""
import re
from typing import Callable, Dict, Optional, Sequence

from hf_xladjust.errors import InputError

_UNNAMED = re.compile(r"LABEL_\d+")


def match_model_labels(config, labels: Sequence[str], head: str, source: Optional[str] = None,
                       task: str = "the data", canonical: Optional[Callable[[str], Optional[str]]] = None
                       ) -> Dict[str, int]:
    """Our label name -> the model's label id, for every one of `labels`.

    `head` is the architecture suffix of a head sized for the labels ("SequenceClassification",
    "TokenClassification"): a config of that architecture with `LABEL_i` names must have as many as
    we do. `canonical` maps one of the model's label names to ours (None: not one of ours); without it
    a name must be ours exactly. `task` names our label set in messages. Every mismatch raises
    `InputError` naming the model (`source`) and both label sets."""
    names = [str(config.id2label[i]) for i in sorted(config.id2label)]
    if all(_UNNAMED.fullmatch(n) for n in names):
        has_head = any(a.endswith(f"For{head}") for a in (getattr(config, "architectures", None) or []))
        if has_head and len(names) != len(labels):
            kind = re.sub(r"(?<=[a-z])(?=[A-Z])", "-", head).lower()
            raise InputError(f"the model's {kind} head has {len(names)} labels; {task} has {len(labels)} "
                             f"({', '.join(labels)})", source)
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
        return dict(config.label2id)
    canonical = canonical or (lambda name: name if name in labels else None)
    model_ids: Dict[str, int] = {}
    extra = []
    for i, name in config.id2label.items():
        ours = canonical(str(name))
        if ours is None:
            extra.append(str(name))
        else:
            model_ids[ours] = int(i)
    missing = [n for n in labels if n not in model_ids]
    if missing or extra or len(names) != len(labels):
        detail = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                             f"not in {task}: {', '.join(extra)}" if extra else "") if part)
        raise InputError(f"the model's labels {names} do not match {task}'s ({', '.join(labels)})"
                         + (f": {detail}" if detail else ""), source)
    return model_ids
