"""Checks of a plan before anything runs, so that a typo fails in seconds instead of hours into the grid.

- every step's arguments against its script's own parser (a `build_parser()` in the script or module, as
  run_*.py and hf_xladjust.experiments.align have): an unknown flag such as `--num_trian_epochs`, a value of
  the wrong type or outside its choices is an error naming the step. A script file is imported only when
  its text defines `build_parser(`, so that a script of one's own (with top-level code) is never run here;
  such scripts are not checked, nor is a module (`-m`, e.g. the transform fit) without `build_parser`; a
  module that does not exist is an error naming the step;
- the model: a local folder that does not exist, or, offline, a Hub name that is not in the local cache; the
  same for every model a step names outside the results folder (--config_name, --tokenizer_name,
  --anchor_model_name_or_path);
- the input files: those the script's `input_files(args)` names for the parsed flags (the function every
  run_*.py also calls first thing), except those in the results folder, which earlier steps write.
Only the flags are parsed (argparse level): the dataclasses are not built, so a GPU-only option such as
`--bf16` can be checked on a CPU machine. Every problem of every step is collected and reported in one error,
one line each, so that one dry run shows all there is to fix.
"""
import argparse
import difflib
import hashlib
import importlib
import importlib.util
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from hf_xladjust.errors import InputError
from hf_xladjust.experiments.plan import Step
from hf_xladjust.files import input_problems

# script or module -> (its parser, its `input_files(args)` or None), or None when it offers no parser
_PARSERS: Dict[str, Optional[Tuple[argparse.ArgumentParser, Optional[Callable]]]] = {}
# the arguments naming a model (checked as the configuration's model_name_or_path is)
MODEL_ARGS = ("model_name_or_path", "config_name", "tokenizer_name", "anchor_model_name_or_path")


class _ParseError(Exception):
    pass


def _script_parser(step: Step) -> Optional[Tuple[argparse.ArgumentParser, Optional[Callable]]]:
    """The parser of the step's script (`build_parser()`) and its `input_files`, or None when it has no parser."""
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
        module = load()
        build = getattr(module, "build_parser", None)  # None: a script of its own, not checked
        _PARSERS[key] = (build(), getattr(module, "input_files", None)) if build is not None else None
    return _PARSERS[key]


def _parse_flags(parser: argparse.ArgumentParser, args: List[str]) -> Tuple[argparse.Namespace, List[str]]:
    """Parse `args` at the argparse level; returns the namespace and the unknown ones, raises _ParseError for
    bad values. Abbreviations count as unknown: `--max_sentence` would silently mean `--max_sentences`."""
    def error(message):
        raise _ParseError(message)

    original, abbrev = parser.error, parser.allow_abbrev
    parser.error, parser.allow_abbrev = error, False
    try:
        return parser.parse_known_args(args)
    finally:
        parser.error, parser.allow_abbrev = original, abbrev


def config_sections(cfg, step: Step) -> Dict[str, dict]:
    """The configuration's argument sections that feed `step`, by their key path."""
    if step.kind == "transform":  # no common_args: the fit is no Trainer script
        return {"transform.args": cfg.transform.args, "alignment.args": cfg.alignment.args}
    sections = {"common_args": cfg.common_args}
    if step.kind in ("adjust", "align"):
        sections.update({"adjust.args": cfg.adjust.args, "alignment.args": cfg.alignment.args})
        if step.regime in cfg.adjust.regime_args:  # a realignment regime's own run_adjust.py flags
            sections[f"adjust.regime_args.{step.regime}"] = cfg.adjust.regime_args[step.regime]
    elif step.task in cfg.tasks:
        task = cfg.tasks[step.task]
        sections[f"tasks.{step.task}.args"] = task.args
        for regime in task.inherited_regimes(step.regime):  # adjusted_n{size}: adjusted's, then its own
            sections[f"tasks.{step.task}.regime_args.{regime}"] = task.regime_args.get(regime, {})
        if step.regime == "original_cont":
            sections["alignment.args"] = cfg.alignment.args
    return sections


def step_problems(step: Step, sections: Optional[Dict[str, dict]] = None, results_dir: Optional[str] = None,
                  checked_models: Sequence[str] = ()) -> List[str]:
    """Every problem of one step, each a line without the step's name: a flag its script does not take (with
    the configuration section it came from), a value its parser refuses, an input file or folder that is
    missing (as the script's `input_files` names them; those under `results_dir` are made by earlier steps),
    a model that cannot load. Scripts without `build_parser` are not checked."""
    found = _script_parser(step)
    if found is None:
        return []
    parser, input_files = found
    script = step.script[-1]
    try:
        namespace, unknown = _parse_flags(parser, step.args)
    except _ParseError as e:
        return [f"{script} refuses its arguments: {e}"]
    problems = []
    flags = [a for a in unknown if a.startswith("-")]
    if unknown:
        known = [o.lstrip("-") for a in parser._actions for o in a.option_strings if o.startswith("--")]
        for flag in flags or unknown[:1]:
            name = flag.lstrip("-")
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            origin = [where for where, args in (sections or {}).items() if name in args]
            problems.append(f"{script} has no argument {name!r}{hint}"
                            + (f" (key {name} in {' and '.join(origin)})" if origin else ""))

    def made_by_the_grid(path: str) -> bool:
        full = os.path.normpath(os.path.join(step.workdir, os.path.expanduser(path)))
        return results_dir is not None and (full + os.sep).startswith(os.path.join(results_dir, ""))

    for key in MODEL_ARGS:
        model = getattr(namespace, key, None)
        if model and model not in checked_models and not made_by_the_grid(model):
            try:
                check_model(model, step.workdir, step.env, "", key)
            except InputError as e:
                problems.append(e.reason)
    if input_files is not None:
        try:
            inputs = [item for item in input_files(namespace) if not made_by_the_grid(item.path)]
        except ValueError as e:  # InputError included: a value the script would refuse
            return problems + [f"{script} refuses its arguments: {e}"]
        for item, why in input_problems(inputs, step.workdir):
            path = os.path.normpath(os.path.join(step.workdir, os.path.expanduser(item.path)))
            problems.append(f"input {path} ({item.flag}): {why}")
    return problems


def _offline(env: Dict[str, str]) -> bool:
    return any(str({**os.environ, **env}.get(k, "")).lower() in ("1", "true", "yes")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_model(model: str, workdir: str, env: Dict[str, str], source: str, key: str = "model_name_or_path") -> None:
    """A model that cannot load: a missing local folder, or (offline) a Hub name absent from the cache."""
    path = os.path.join(workdir, os.path.expanduser(model))
    if os.path.isdir(path):
        return
    looks_local = (model.startswith((".", "/", "~")) or model.count("/") > 1
                   or os.path.isdir(os.path.join(workdir, model.split("/")[0])))
    if looks_local:
        raise InputError(f"{key}: no model folder {os.path.normpath(path)}", source)
    if _offline(env):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise InputError(f"{key}: {model!r} is neither a folder nor in the Hub cache, and the "
                             "grid runs offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)", source)


def plan_problems(steps: List[Step], cfg, workdir: str) -> List[str]:
    """Everything above, for the steps about to run (or be printed by --dry_run) of a GridConfig: every
    problem of every step, one line each; a problem shared by several steps is named once, with its first
    step and how many more have it."""
    results_dir = os.path.normpath(os.path.join(workdir, cfg.results_dir))
    problems: Dict[str, List[str]] = {}  # problem -> the steps it was found in ([] for the configuration's)
    try:
        check_model(cfg.model_name_or_path, workdir, cfg.env, cfg.source)
    except InputError as e:
        problems[e.reason] = []
    for step in steps:
        for problem in step_problems(step, config_sections(cfg, step), results_dir, [cfg.model_name_or_path]):
            problems.setdefault(problem, []).append(step.name)
    return [problem if not names else f"step {names[0]}: {problem}"
            + (f" (and {len(names) - 1} more step{'s' if len(names) > 2 else ''})" if len(names) > 1 else "")
            for problem, names in problems.items()]


def raise_problems(problems: List[str], source: str) -> None:
    """One InputError for all `problems`: a single one as one line, several as a count and one line each."""
    if len(problems) == 1:
        raise InputError(problems[0], source)
    if problems:
        raise InputError(f"{len(problems)} problems, nothing was run:\n" + "\n".join(f"  {p}" for p in problems),
                         source)


def check_plan(steps: List[Step], cfg, workdir: str) -> None:
    """`plan_problems`, raised as one InputError listing them all, so that one run shows all there is to fix."""
    raise_problems(plan_problems(steps, cfg, workdir), cfg.source)
