"""Checks of a plan before anything runs, so that a typo fails in seconds instead of hours into the grid.

- every step's arguments against its script's own parser (a `build_parser()` in the script or module, as
  run_*.py and hf_xladjust.experiments.align have): an unknown flag such as `--num_trian_epochs`, a value of
  the wrong type or outside its choices is an error naming the step. A script file is imported only when
  its text defines `build_parser(`, so that a script of one's own (with top-level code) is never run here;
  such scripts are not checked, nor is a module (`-m`, e.g. the transform fit) without `build_parser`; a
  module that does not exist is an error naming the step;
- the model: a local folder that does not exist, or, offline, a Hub name that is not in the local cache.
Only the flags are parsed (argparse level): the dataclasses are not built, so a GPU-only option such as
`--bf16` can be checked on a CPU machine.
"""
import argparse
import difflib
import hashlib
import importlib
import importlib.util
import os
from typing import Dict, List, Optional

from hf_xladjust.errors import InputError
from hf_xladjust.experiments.plan import Step

_PARSERS: Dict[str, Optional[argparse.ArgumentParser]] = {}


class _ParseError(Exception):
    pass


def _script_parser(step: Step) -> Optional[argparse.ArgumentParser]:
    """The parser of the step's script (`build_parser()`), or None when the script has none."""
    if step.script[0] == "-m":
        key = step.script[1]

        def load():
            try:
                return importlib.import_module(key)
            except ModuleNotFoundError as e:
                if e.name is None or not (key == e.name or key.startswith(e.name + ".")):
                    raise  # the module is there; something it imports is not
                raise InputError(f"step {step.name}: no module {key} (python -m {key})") from None
    else:
        key = os.path.normpath(os.path.join(step.workdir, step.script[0]))

        def load():
            if not os.path.isfile(key):
                raise InputError(f"step {step.name}: no script {key}")
            with open(key, encoding="utf-8", errors="replace") as f:
                if "def build_parser(" not in f.read():
                    return None  # never import (run) a script that does not offer its parser
            name = "_grid_script_" + hashlib.sha1(key.encode()).hexdigest()[:12]
            spec = importlib.util.spec_from_file_location(name, key)
            if spec is None:  # not a Python file name
                return None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    if key not in _PARSERS:
        build = getattr(load(), "build_parser", None)  # None: a script of its own, not checked
        _PARSERS[key] = build() if build is not None else None
    return _PARSERS[key]


def _parse_flags(parser: argparse.ArgumentParser, args: List[str]) -> List[str]:
    """Parse `args` at the argparse level; returns the unknown ones, raises _ParseError for bad values.
    Abbreviations count as unknown: `--max_sentence` would silently mean `--max_sentences`."""
    def error(message):
        raise _ParseError(message)

    original, abbrev = parser.error, parser.allow_abbrev
    parser.error, parser.allow_abbrev = error, False
    try:
        return parser.parse_known_args(args)[1]
    finally:
        parser.error, parser.allow_abbrev = original, abbrev


def config_sections(cfg, step: Step) -> Dict[str, dict]:
    """The configuration's argument sections that feed `step`, by their key path."""
    if step.kind == "transform":  # no common_args: the fit is no Trainer script
        return {"transform.args": cfg.transform.args, "alignment.args": cfg.alignment.args}
    sections = {"common_args": cfg.common_args}
    if step.kind in ("adjust", "align"):
        sections.update({"adjust.args": cfg.adjust.args, "alignment.args": cfg.alignment.args})
    elif step.task in cfg.tasks:
        task = cfg.tasks[step.task]
        sections[f"tasks.{step.task}.args"] = task.args
        for regime in task.inherited_regimes(step.regime):  # adjusted_n{size}: adjusted's, then its own
            sections[f"tasks.{step.task}.regime_args.{regime}"] = task.regime_args.get(regime, {})
        if step.regime == "original_cont":
            sections["alignment.args"] = cfg.alignment.args
    return sections


def check_step_arguments(step: Step, sections: Optional[Dict[str, dict]] = None) -> None:
    """One-line InputError naming the step, the flag its script does not take (or the bad value) and the
    configuration section it came from."""
    parser = _script_parser(step)
    if parser is None:
        return
    script = step.script[-1]
    try:
        unknown = _parse_flags(parser, step.args)
    except _ParseError as e:
        raise InputError(f"step {step.name}: {script} refuses its arguments: {e}") from None
    flags = [a for a in unknown if a.startswith("-")]
    if unknown:
        known = [o.lstrip("-") for a in parser._actions for o in a.option_strings if o.startswith("--")]
        name = (flags or unknown)[0].lstrip("-")
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        origin = [where for where, args in (sections or {}).items() if name in args]
        raise InputError(f"step {step.name}: {script} has no argument {name!r}{hint}"
                         + (f" (key {name} in {' and '.join(origin)})" if origin else "")) from None


def _offline(env: Dict[str, str]) -> bool:
    return any(str({**os.environ, **env}.get(k, "")).lower() in ("1", "true", "yes")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_model(model: str, workdir: str, env: Dict[str, str], source: str) -> None:
    """A model that cannot load: a missing local folder, or (offline) a Hub name absent from the cache."""
    path = os.path.join(workdir, os.path.expanduser(model))
    if os.path.isdir(path):
        return
    looks_local = (model.startswith((".", "/", "~")) or model.count("/") > 1
                   or os.path.isdir(os.path.join(workdir, model.split("/")[0])))
    if looks_local:
        raise InputError(f"model_name_or_path: no model folder {os.path.normpath(path)}", source)
    if _offline(env):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise InputError(f"model_name_or_path: {model!r} is neither a folder nor in the Hub cache, and the "
                             "grid runs offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)", source)


def check_plan(steps: List[Step], cfg, workdir: str) -> None:
    """Everything above, for the steps about to run (or be printed by --dry_run) of a GridConfig."""
    check_model(cfg.model_name_or_path, workdir, cfg.env, cfg.source)
    for step in steps:
        try:
            check_step_arguments(step, config_sections(cfg, step))
        except InputError as e:
            raise InputError(e.reason, cfg.source) from None
