"""Hub dataset ids as today's `datasets` takes them, and the one call every script loads a Hub split through.

With datasets 5.x and huggingface_hub 2.x a dataset id without a namespace (`xnli`) is refused before any
request (huggingface/datasets#8612). The legacy names the toolkit documented map to their canonical
repositories with one log line; any other single-segment name that is not a local folder is refused
with one line, so a run fails before it loads a model. A local folder laid out as a Hub repository
(one folder per config, a README.md whose YAML declares `configs:`) loads through the same call.
"""
import logging
import os

from hf_xladjust.errors import InputError

logger = logging.getLogger(__name__)

# https://huggingface.co/datasets/facebook/xnli, .../unimelb-nlp/wikiann, .../rajpurkar/squad, .../google/xtreme
LEGACY_DATASET_IDS = {
    "xnli": "facebook/xnli",
    "wikiann": "unimelb-nlp/wikiann",
    "squad": "rajpurkar/squad",
    "xtreme": "google/xtreme",
}
_announced = set()


def canonical_dataset_id(name: str, option: str = "--dataset_name") -> str:
    """`name` as `datasets.load_dataset` takes it today: a `namespace/name` id or a local folder stay as
    they are, a legacy short name becomes its canonical id (logged once), anything else is an
    `InputError` naming `option`."""
    if name in LEGACY_DATASET_IDS and not os.path.isdir(name):
        canonical = LEGACY_DATASET_IDS[name]
        if name not in _announced:
            _announced.add(name)
            logger.warning("%s %s: reading the Hub's %s (datasets 5.x refuses ids without a namespace)",
                           option, name, canonical)
        return canonical
    if "/" in name or os.sep in name or os.path.isdir(name):
        return name
    raise InputError(f"{option} {name!r}: a Hub dataset id is namespace/name (e.g. "
                     f"{', '.join(LEGACY_DATASET_IDS.values())}) or a local folder; datasets 5.x refuses "
                     "single-segment ids")


def load_hub_split(name: str, config=None, split: str = "train", option: str = "--dataset_name", **hub_kwargs):
    """`datasets.load_dataset(canonical id, config, split=split)`; `hub_kwargs` (cache_dir, token, ...)
    go through unchanged."""
    import datasets

    return datasets.load_dataset(canonical_dataset_id(name, option), config, split=split, **hub_kwargs)
