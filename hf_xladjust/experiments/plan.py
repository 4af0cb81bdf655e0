"""The plan: every step of the grid with its full command line, output folder, dependencies and fingerprint.

Step kinds: `align` (one per language), `adjust` (`adjust/{lang}/seed{n}`, `adjust/multi/seed{n}` for
adjusted_multi, `adjust_n{size}/{lang}/seed{n}` for parallel_sizes, `adjust_lora|sentence|frozen/{lang}/seed{n}`
for the realignment regimes), `transform` (the fit of rotation /
normalized, `transform/{regime}/{key}/{lang}/seed{n}`, key the task whose Original fine-tuned model it is
fitted on, or `start` for the start model of an evaluation-only task) and `task` (`{task}/{regime}/{lang}/seed{n}`).

A step's fingerprint hashes its script and arguments (results-folder paths written relative to the
results folder, the interpreter left out), its number of processes, the content of every input file
or folder named in its arguments, its dependencies' fingerprints and, where the config's env sets it,
HF_XLADJUST_PRECISION (bf16 autocast on a CPU changes the numbers). A finished step whose
fingerprint is unchanged is skipped; changing an argument changes that step's fingerprint and,
through them, its dependents', and nothing else. Code changes are not in fingerprints (use --rerun).
"""
import glob
import hashlib
import json
import os
import shlex
import string
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from hf_xladjust.alignment.lora import MERGED_SUBDIR
from hf_xladjust.errors import InputError
from hf_xladjust.experiments.config import (
    MULTI,
    REALIGN_REGIMES,
    SHARED_REGIMES,
    TRANSFORM_REGIMES,
    GridConfig,
    Resources,
    realign_step,
    regime_size,
    sized_regime,
)
from hf_xladjust.hub_data import canonical_dataset_id
from hf_xladjust.precision import PRECISION_ENV

FINGERPRINT_VERSION = "hf_xladjust-grid-v1"
# Arguments the grid sets itself; a config that sets them would silently break the grid's layout.
GRID_ARGS = ("model_name_or_path", "output_dir", "seed", "aligned_pairs", "anchor_model_name_or_path",
             "resume_from_checkpoint", "align_train_file", "align_source_file", "align_target_file",
             "parallel", "alignment_files", "representation_transform", "parallel_dataset", "parallel_config",
             "parallel_split")
ADJUST_OUTPUTS = ["config.json", "aligned_pairs.jsonl", "train_results.json"]
# --lora_r --merge_lora: the adapter in the folder, the merged weights (what the tasks fine-tune) in merged/
LORA_OUTPUTS = ["adapter_config.json", "aligned_pairs.jsonl", "train_results.json", f"{MERGED_SUBDIR}/config.json",
                f"{MERGED_SUBDIR}/run_args.json"]
TRANSFORM_OUTPUTS = ["representation_transform.pt", "run_args.json"]  # run_args.json: the fit's last write
# The paper's batches per optimisation step, whatever the number of processes: 32 training examples
# (32 sentence pairs in the adjustment) and, in continual runs, a side batch of 16 aligned pairs.
PAPER_TRAIN_BATCH = 32
PAPER_ALIGN_BATCH = 16


@dataclass
class Step:
    name: str  # e.g. "adjust/es/seed0", "nli/adjusted_cont/es/seed3", "nli/original/all/seed0"
    kind: str  # align | adjust | transform | task
    output_dir: str
    script: List[str]  # ["run_glue_xl.py"] or ["-m", "module"]
    args: List[str]
    resources: Resources
    deps: List[str] = field(default_factory=list)
    outputs: List[str] = field(default_factory=list)  # files that must exist for the step to count as done
    resume: bool = False  # the script takes --resume_from_checkpoint
    links: List[str] = field(default_factory=list)  # symlinks to output_dir made when it finishes
    task: Optional[str] = None
    regime: Optional[str] = None
    lang: Optional[str] = None
    seed: Optional[int] = None
    python: str = sys.executable
    workdir: str = "."
    env: Dict[str, str] = field(default_factory=dict)
    keep_checkpoints: bool = False
    inputs: Dict[str, str] = field(default_factory=dict)  # input path -> content hash
    fingerprint: str = ""

    @property
    def launcher(self) -> List[str]:
        if self.resources.num_processes > 1:
            return [self.python, "-m", "accelerate.commands.launch", "--num_processes",
                    str(self.resources.num_processes)]
        return [self.python]

    @property
    def command(self) -> List[str]:
        return self.launcher + self.script + self.args

    def shell_command(self, extra: Optional[List[str]] = None) -> str:
        return " ".join(shlex.quote(a) for a in self.command + list(extra or []))

    def shell_script(self) -> str:
        """command.sh: the step as one can run it by hand (it does not mark the step finished)."""
        exports = "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in sorted(self.env.items()))
        return (f"#!/usr/bin/env bash\n# grid step {self.name}, fingerprint {self.fingerprint}\n"
                f"# run by the grid through hf_xladjust.experiments; by hand it is not marked finished\n"
                f"set -euo pipefail\ncd {shlex.quote(self.workdir)}\n{exports}"
                + " \\\n    ".join(_wrap(self.command)) + "\n")

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["command"] = self.command
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Step":
        d = {k: v for k, v in d.items() if k != "command"}
        d["resources"] = Resources(**d["resources"])
        return cls(**d)


def _wrap(argv: List[str]) -> List[str]:
    """Group `--flag value...` for a readable multi-line command."""
    groups: List[List[str]] = []
    for a in argv:
        if a.startswith("--") or not groups:
            groups.append([a])
        else:
            groups[-1].append(a)
    return [" ".join(shlex.quote(a) for a in g) for g in groups]


def to_argv(args: Dict[str, Any]) -> List[str]:
    """`{key: value}` -> HfArgumentParser flags: booleans as `--key true/false` (Optional[bool] fields need the
    value), lists as several values, None left out."""
    argv: List[str] = []
    for key, value in args.items():
        if value is None:
            continue
        flag = f"--{key}"
        if isinstance(value, bool):
            argv += [flag, "true" if value else "false"]
        elif isinstance(value, (list, tuple)):
            argv += [flag] + [str(v) for v in value]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value, sort_keys=True)]
        else:
            argv += [flag, str(value)]
    return argv


def _fill(args: Dict[str, Any], values: Dict[str, Any], where: str, source: str) -> Dict[str, Any]:
    """Fill `${lang}`, `${seed}`, `${results_dir}`, `${model}` in argument values."""
    def one(v):
        if not isinstance(v, str) or "$" not in v:
            return v
        try:
            return string.Template(v).substitute(values)
        except KeyError as e:
            raise InputError(f"{where}: ${{{e.args[0]}}} is not defined for this step (value {v!r})", source) from None
        except ValueError as e:
            raise InputError(f"{where}: {e} in {v!r}", source) from None
    return {k: [one(x) for x in v] if isinstance(v, list) else one(v) for k, v in args.items()}


def _paper_batches(args: Dict[str, Any], resources: Resources, continual: bool, where: str,
                   source: str) -> Dict[str, int]:
    """The scripts' batches are per device: under `accelerate launch --num_processes N` split the paper's
    batch of 32 (training examples, or sentence pairs for the adjustment) and, in a continual run, the
    side batch of 16 aligned pairs, over the N processes, so that an optimisation step sees the paper's
    numbers. A batch the step's arguments set is left alone."""
    n = resources.num_processes
    if n <= 1:
        return {}
    paper = {"per_device_train_batch_size": PAPER_TRAIN_BATCH}
    if continual:
        paper["align_batch_size"] = PAPER_ALIGN_BATCH
    split = {}
    for key, batch in paper.items():
        if key in args:
            continue
        if batch % n:
            raise InputError(f"{where}: the paper's {key} of {batch} does not split over num_processes {n} (the "
                             f"batch is per device); use a number of processes that divides {batch}, or set "
                             f"{key} (per device) in the step's arguments", source)
        split[key] = batch // n
    return split


def _check_grid_args(args: Dict[str, Any], where: str, source: str) -> None:
    clash = sorted(set(args) & set(GRID_ARGS))
    if clash:
        raise InputError(f"{where}: the grid sets {', '.join(clash)} itself; remove it from the configuration",
                         source)


# --- fingerprints -----------------------------------------------------------------------------------

_FILE_HASHES: Dict[Any, str] = {}
_BIG_FILE = 1 << 30


def file_hash(path: str) -> str:
    """sha256 of a file's content (size and mtime for files over 1 GiB), cached per (path, size, mtime)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        if st.st_size > _BIG_FILE:
            _FILE_HASHES[key] = f"size:{st.st_size}:mtime:{st.st_mtime_ns}"
        else:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def path_hash(path: str) -> str:
    if os.path.isfile(path):
        return file_hash(path)
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(f"{os.path.relpath(full, path)}\0{file_hash(full)}\n".encode())
    return h.hexdigest()


def _inputs(args: List[str], workdir: str, results_dir: str) -> Dict[str, str]:
    """Hashes of the files and folders named in the arguments (outside the results folder, whose
    content the dependencies' fingerprints stand for). `{lang}` patterns cover every matching file."""
    found: Dict[str, str] = {}
    for a in args:
        if a.startswith("-") or len(a) > 4096:
            continue
        candidates = [a]
        if "{lang}" in a:
            candidates = sorted(glob.glob(os.path.join(workdir, a.replace("{lang}", "*"))))
        for c in candidates:
            full = os.path.normpath(os.path.join(workdir, c))
            if os.path.exists(full) and not (full + os.sep).startswith(results_dir + os.sep):
                found[os.path.relpath(full, workdir) if not os.path.isabs(c) else full] = path_hash(full)
    return found


def compute_fingerprint(step: Step, deps: Dict[str, str], results_dir: str) -> str:
    def rel(a):
        return a.replace(results_dir, "$RESULTS")

    record = {"version": FINGERPRINT_VERSION, "script": step.script, "args": [rel(a) for a in step.args],
              "num_processes": step.resources.num_processes, "inputs": step.inputs,
              "deps": {name: deps[name] for name in sorted(step.deps)}}
    if PRECISION_ENV in step.env:  # numerics differ (bf16 autocast): never reuse an fp32 step for a bf16 grid
        record["precision_env"] = step.env[PRECISION_ENV]
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]


# --- the plan ----------------------------------------------------------------------------------------

def _multi_args(cfg: GridConfig, alignment_file: Dict[str, str], source: str) -> Dict[str, Any]:
    """run_adjust.py's corpora for adjusted_multi: `--parallel es=FILE ru=SRC,TGT ...` with, from the shared
    (or given) alignments, `--aligner pharaoh --alignment_files es=F ...`, and the pair options of
    alignment.args (the same per-language sample size and filters as the one-language runs)."""
    named = sorted({"source_lang", "target_lang", "alignment_file"} & set(cfg.alignment.args))
    if named:
        raise InputError(f"alignment.args: adjusted_multi runs run_adjust.py --parallel, which names each corpus's "
                         f"language itself; remove {', '.join(named)} (english_side: target for 'xx ||| en' "
                         "corpora)", source)
    specs = []
    for lang in cfg.languages:
        if cfg.parallel[lang].dataset:
            raise InputError(f"parallel.{lang}: adjusted_multi passes --parallel {lang}=FILES, which takes files, "
                             f"not a Hub dataset ({cfg.parallel[lang].dataset})", source)
        files = [f for f in cfg.parallel[lang].args().values()]
        if any("," in f for f in files):
            raise InputError(f"parallel.{lang}: adjusted_multi passes --parallel {lang}=SOURCE,TARGET, which "
                             f"cannot hold a path with a comma ({', '.join(files)})", source)
        specs.append(f"{lang}=" + ",".join(files))
    args: Dict[str, Any] = {"parallel": specs, **cfg.alignment.args}
    if all(lang in alignment_file for lang in cfg.languages):
        args.update(aligner="pharaoh", alignment_files=[f"{x}={alignment_file[x]}" for x in cfg.languages])
    else:
        args.update(aligner=cfg.alignment.aligner, symmetrization=cfg.alignment.symmetrization)
    return args


def _dataset_sides(pair_args: Dict[str, Any], lang: str) -> Dict[str, Any]:
    """The languages a translation dataset's two sides are read in, as `alignment_args` passes them on."""
    return {"source_lang": pair_args.get("source_lang"), "target_lang": pair_args.get("target_lang", lang)}


def _canonical_ids(args: Dict[str, Any], where: str) -> Dict[str, Any]:
    """The Hub dataset ids of a step's arguments (`dataset_name`, `*_dataset`) as namespace/name: a legacy
    short name is mapped (with one log line), anything else refused, so that no step is planned with an id
    today's `datasets` refuses."""
    return {key: canonical_dataset_id(value, f"{where}: {key}")
            if (key == "dataset_name" or key.endswith("_dataset")) and isinstance(value, str) else value
            for key, value in args.items()}


def build_plan(cfg: GridConfig, workdir: Optional[str] = None) -> List[Step]:
    """All steps of the grid, dependencies first: alignments, adjustments, transform fits, then each task."""
    workdir = os.path.abspath(workdir or cfg.workdir or os.getcwd())
    results = os.path.normpath(os.path.join(workdir, cfg.results_dir))
    python = cfg.python or sys.executable
    model = cfg.model_name_or_path
    src = cfg.source
    common = {"python": python, "workdir": workdir, "env": dict(cfg.env), "keep_checkpoints": cfg.keep_checkpoints}
    _check_grid_args(cfg.common_args, "common_args", src)
    _check_grid_args(cfg.adjust.args, "adjust.args", src)
    for regime, regime_args in cfg.adjust.regime_args.items():
        _check_grid_args(regime_args, f"adjust.regime_args.{regime}", src)
    _check_grid_args(cfg.transform.args, "transform.args", src)
    if "kind" in cfg.transform.args:
        raise InputError("transform.args: the grid sets kind itself (rotation or normalize, from the regime); "
                         "remove it from the configuration", src)
    steps: List[Step] = []

    def out(*parts):
        return os.path.join(results, *parts)

    # 1. alignments shared by all seeds of a language
    alignment_file: Dict[str, str] = {}
    align_step: Dict[str, str] = {}
    if cfg.needs_parallel and cfg.alignment.mode == "shared":
        for lang in cfg.languages:
            if lang in cfg.alignment.files:
                alignment_file[lang] = cfg.alignment.files[lang]
                continue
            args = {**cfg.parallel[lang].args(), "aligner": cfg.alignment.aligner,
                    "symmetrization": cfg.alignment.symmetrization, "output_dir": out("align", lang)}
            if cfg.parallel[lang].dataset:  # its sides in the order run_adjust.py reads them (English first)
                args.update(_dataset_sides(cfg.alignment.args, lang))
            if cfg.alignment.args.get("skip_bad_lines"):
                args["skip_bad_lines"] = True
            step = Step(name=f"align/{lang}", kind="align", output_dir=out("align", lang),
                        script=["-m", "hf_xladjust.experiments.align"], args=to_argv(args),
                        resources=cfg.alignment.resources, outputs=["alignment.pharaoh"], lang=lang, **common)
            steps.append(step)
            alignment_file[lang] = os.path.join(step.output_dir, "alignment.pharaoh")
            align_step[lang] = step.name

    _check_grid_args(cfg.alignment.args, "alignment.args", src)

    def alignment_args(lang):
        pair_args = {"target_lang": lang, **cfg.alignment.args}
        if lang in alignment_file:
            return {**pair_args, "aligner": "pharaoh", "alignment_file": alignment_file[lang]}
        return {**pair_args, "aligner": cfg.alignment.aligner, "symmetrization": cfg.alignment.symmetrization}

    # 2. stage 1: one adjustment per language and seed; per size (parallel_sizes); over all languages (multi)
    def adjust_step(name: str, lang_args: Dict[str, Any], seed: int, regime: str, deps: List[str],
                    lang: Optional[str], extra: Optional[Dict[str, Any]] = None) -> Step:
        values = {"seed": seed, "results_dir": results, "model": model, **({"lang": lang} if lang else {})}
        resources = cfg.adjust.resources_for(regime)
        args = {"model_name_or_path": model, **lang_args, **_fill(cfg.common_args, values, "common_args", src),
                **_fill(cfg.adjust.args, values, "adjust.args", src),
                **_fill(cfg.adjust.args_for(regime), values, f"adjust.regime_args.{regime}", src), **(extra or {})}
        args.update(_paper_batches(args, resources, False, "adjust", src))
        output_dir = out(name)
        args.update(seed=seed, output_dir=output_dir)
        outputs = LORA_OUTPUTS if args.get("lora_r") else ADJUST_OUTPUTS
        return Step(name=name, kind="adjust", output_dir=output_dir, script=[cfg.adjust.script], args=to_argv(args),
                    resources=resources, deps=deps, outputs=list(outputs), resume=True, regime=regime,
                    lang=lang, seed=seed, **common)

    regimes = cfg.all_regimes
    for lang in cfg.languages:
        pair_args = {**cfg.parallel[lang].args(), **alignment_args(lang)} if cfg.needs_parallel else {}
        deps = [align_step[lang]] if lang in align_step else []
        for seed in cfg.seeds if cfg.needs_adjustment else ():
            steps.append(adjust_step(f"adjust/{lang}/seed{seed}", pair_args, seed, "adjusted", deps, lang))
        for regime in (r for r in REALIGN_REGIMES if r in regimes):
            for seed in cfg.seeds:
                steps.append(adjust_step(f"{realign_step(regime)}/{lang}/seed{seed}", pair_args, seed, regime, deps,
                                         lang))
        for size in sorted(cfg.parallel_sizes):
            for seed in cfg.seeds:
                steps.append(adjust_step(f"adjust_n{size}/{lang}/seed{seed}", pair_args, seed, sized_regime(size),
                                         deps, lang, {"max_sentences": size}))
    if "adjusted_multi" in regimes:
        multi_args = _multi_args(cfg, alignment_file, src)
        for seed in cfg.seeds:
            steps.append(adjust_step(f"adjust/{MULTI}/seed{seed}", multi_args, seed, "adjusted_multi",
                                     [align_step[x] for x in cfg.languages if x in align_step], None))

    def adjusted_model(regime: str, lang: str, seed: int) -> str:
        """The adjust step a regime starts from."""
        size = regime_size(regime)
        if size is not None:
            return f"adjust_n{size}/{lang}/seed{seed}"
        if regime in REALIGN_REGIMES:
            return f"{realign_step(regime)}/{lang}/seed{seed}"
        return f"adjust/{MULTI}/seed{seed}" if regime == "adjusted_multi" else f"adjust/{lang}/seed{seed}"

    def adjusted_start(regime: str, lang: str, seed: int) -> str:
        """The folder a regime's tasks start from: its adjust step's output (its merged/ weights with LoRA)."""
        folder = out(adjusted_model(regime, lang, seed))
        return os.path.join(folder, MERGED_SUBDIR) if regime == "adjusted_lora" else folder

    # 3. transforms: fitted per language and seed on the model a rotation/normalized run evaluates
    fitted: Dict[str, Step] = {}

    def fit_step(regime: str, key: str, lang: str, seed: int, fit_model: str, deps: List[str]) -> Step:
        name = f"transform/{regime}/{key}/{lang}/seed{seed}"
        if name not in fitted:
            values = {"lang": lang, "seed": seed, "results_dir": results, "model": model}
            args = {"kind": TRANSFORM_REGIMES[regime], "model_name_or_path": fit_model, **cfg.parallel[lang].args(),
                    **alignment_args(lang), **_fill(cfg.transform.args, values, "transform.args", src),
                    "seed": seed, "output_dir": out(name)}
            fitted[name] = Step(name=name, kind="transform", output_dir=out(name), script=cfg.transform.command,
                                args=to_argv(args), resources=cfg.transform.resources,
                                deps=deps + ([align_step[lang]] if lang in align_step else []),
                                outputs=list(TRANSFORM_OUTPUTS), task=None if key == "start" else key,
                                regime=regime, lang=lang, seed=seed, **common)
            steps.append(fitted[name])
        return fitted[name]

    # 4. tasks: fine-tune on English and evaluate zero-shot (or evaluate only, e.g. XSR)
    ordered = sorted(cfg.tasks, key=lambda t: not cfg.tasks[t].trains)  # training tasks first
    for name in ordered:
        task = cfg.tasks[name]
        where = f"tasks.{name}"
        _check_grid_args(task.args, f"{where}.args", src)
        # transforms last: they evaluate the Original runs
        for regime in sorted(task.regimes_of(regimes), key=lambda r: r in TRANSFORM_REGIMES):
            _check_grid_args(task.args_for(regime), f"{where}.regime_args.{regime}", src)
            transform = regime in TRANSFORM_REGIMES
            # The original model does not depend on the language (nor does the multi-language adjustment):
            # fine-tune once per seed and evaluate every language; the per-language folders link to that run.
            langs = ["all"] if regime in SHARED_REGIMES else list(cfg.languages)
            for lang in langs:
                for seed in cfg.seeds:
                    values = {"seed": seed, "results_dir": results, "model": model}
                    if lang != "all":
                        values["lang"] = lang
                    eval_langs = cfg.languages if lang == "all" else [lang]
                    deps: List[str] = []
                    args: Dict[str, Any] = {}
                    owner = name if task.trains else task.model_from  # whose fine-tuned model is evaluated
                    if transform:
                        original = f"{owner}/original/all/seed{seed}"
                        start = model if owner == "start" else out(original)
                        deps += [] if owner == "start" else [original]
                        fit = fit_step(regime, owner, lang, seed, start, list(deps))
                        deps.append(fit.name)
                    elif owner != "start" and not task.trains:
                        start = out(task.model_from, regime, lang, f"seed{seed}")
                        deps.append(f"{task.model_from}/{regime}/{lang}/seed{seed}")
                    elif regime.startswith("adjusted"):
                        start = adjusted_start(regime, lang, seed)
                        deps.append(adjusted_model(regime, lang, seed))
                    else:
                        start = model
                    args["model_name_or_path"] = start
                    adjusted = out(adjusted_model(regime, lang, seed))
                    if task.trains and regime == "adjusted_cont":
                        args.update(aligned_pairs=os.path.join(adjusted, "aligned_pairs.jsonl"),
                                    anchor_model_name_or_path=model)
                    elif task.trains and regime == "original_cont":
                        args.update({**cfg.parallel[lang].args("align_"), **alignment_args(lang),
                                     "anchor_model_name_or_path": model})
                        if lang in align_step:
                            deps.append(align_step[lang])
                    if task.language_arg:
                        args[task.language_arg] = list(eval_langs)
                    args.update(_fill(cfg.common_args, values, "common_args", src) if task.trains else {})
                    args.update(_fill(task.args, values, f"{where}.args", src))
                    args.update(_fill(task.args_for(regime), values, f"{where}.regime_args", src))
                    args = _canonical_ids(args, where)
                    resources = task.resources_for(regime)
                    if task.trains and not transform:
                        args.update(_paper_batches(args, resources, regime.endswith("_cont"),
                                                   f"{where} ({regime})", src))
                    if transform:  # evaluation only, of the Original run, through the fitted transform
                        args.update({"do_train": False} if task.trains else {})
                        args["representation_transform"] = fit.output_dir
                    output_dir = out(name, regime, lang, f"seed{seed}")
                    args.update(seed=seed, output_dir=output_dir)
                    links = ([out(name, regime, x, f"seed{seed}") for x in cfg.languages] if lang == "all" else [])
                    steps.append(Step(name=f"{name}/{regime}/{lang}/seed{seed}", kind="task", output_dir=output_dir,
                                      script=[task.script], args=to_argv(args), resources=resources,
                                      deps=deps, outputs=list(task.outputs), resume=task.trains and not transform,
                                      links=links, task=name, regime=regime, lang=lang, seed=seed, **common))

    by_name = {s.name: s for s in steps}
    fingerprints: Dict[str, str] = {}
    for step in steps:  # dependencies come first
        missing = [d for d in step.deps if d not in by_name]
        if missing:
            raise InputError(f"step {step.name} depends on {', '.join(missing)}, which the grid does not run", src)
        step.inputs = _inputs(step.args, workdir, results)
        step.fingerprint = fingerprints[step.name] = compute_fingerprint(step, fingerprints, results)
    return steps


def dependents(steps: List[Step], names: List[str]) -> List[str]:
    """`names` and every step that depends on them, directly or not."""
    chosen = set(names)
    for step in steps:  # in dependency order
        if any(d in chosen for d in step.deps):
            chosen.add(step.name)
    return [s.name for s in steps if s.name in chosen]
