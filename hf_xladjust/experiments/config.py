"""The grid's configuration: one YAML (or JSON) file read into dataclasses and checked before anything runs.

Regimes (`regimes:`): `original`, `adjusted` (one adjustment per language), `adjusted_multi` (one adjustment
over all the grid's languages at once, as Cao et al.), `adjusted_cont`, `original_cont`, and the
evaluation-time transforms of the Original fine-tuned models, `rotation` (orthogonal Procrustes) and
`normalized` (vector-space normalisation). `parallel_sizes: [5000, 10000]` adds `adjusted_n5000`, ...
(the adjustment with that many sentences; the paper's footnote), run by every task that runs `adjusted`.
The issue-19 realignments, each its own adjustment (`adjust_{kind}/{lang}/seed{n}`) with run_adjust.py's flags
from `adjust.regime_args` over `REALIGN_REGIMES`' defaults: `adjusted_lora` (LoRA, merged weights fine-tuned),
`adjusted_sentence` (sentence-level InfoNCE), `adjusted_frozen` (AlignFreeze's lower half frozen).

Relative paths in the file are relative to `workdir` (default: the folder the grid is started from),
where the run_*.py scripts live and where every step runs. `${lang}`, `${seed}`, `${results_dir}`
and `${model}` in argument values are filled in by the grid; `{lang}` (no dollar) is left alone for
the scripts' own file patterns such as `--test_file_pattern 'xnli/test-{lang}.tsv'`.
"""
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from hf_xladjust.errors import InputError
from hf_xladjust.hub_data import canonical_dataset_id
from hf_xladjust.tasks.xnli import MIXED_LANGUAGE_SEED

# The issue-19 realignments: regime -> run_adjust.py's arguments by default (adjust.regime_args merged over them).
REALIGN_REGIMES: Dict[str, Dict[str, Any]] = {
    "adjusted_lora": {"lora_r": 8, "merge_lora": True},  # mid-align's r 8 (α 16, dropout 0.1: the flags' defaults)
    "adjusted_sentence": {"align_level": "sentence"},  # at --align_layer (-1 unless set: a middle layer is a choice)
    "adjusted_frozen": {"freeze_layers": "lower"},  # AlignFreeze's freeze_realign_unfreeze
}
REGIMES = ("original", "adjusted", "adjusted_multi", "adjusted_cont", "original_cont", "rotation", "normalized",
           *REALIGN_REGIMES)
# Evaluation-time transforms fitted on the Original fine-tuned model: regime -> the fit module's --kind.
TRANSFORM_REGIMES = {"rotation": "rotation", "normalized": "normalize"}
# Regimes whose one run per seed serves every language (`{task}/{regime}/all/seed{n}`, linked per language).
SHARED_REGIMES = ("original", "adjusted_multi")
MULTI = "multi"  # adjust/multi/seed{n}: the adjustment over all languages at once
KNOWN_TASKS = ("nli", "ner", "qa", "xsr")
_SIZED = re.compile(r"^adjusted_n([1-9][0-9]*)$")


def realign_step(regime: str) -> str:
    """The adjust steps' folder of a realignment regime: `adjust_lora` for adjusted_lora."""
    return "adjust_" + regime[len("adjusted_"):]


def sized_regime(size: int) -> str:
    """The regime of the adjustment with `size` sentences (`parallel_sizes`): `adjusted_n5000`."""
    return f"adjusted_n{size}"


def regime_size(regime: str) -> Optional[int]:
    """5000 for `adjusted_n5000`, None for any other regime."""
    m = _SIZED.match(regime)
    return int(m.group(1)) if m else None


@dataclass
class Resources:
    """What one step asks of the job engine (Slurm: --gpus-per-node, --cpus-per-task, --mem, --time)."""

    gpus: int = 0
    num_processes: int = 1  # > 1: the script runs under `accelerate launch --num_processes N`
    cpus: int = 4
    mem_gb: float = 32
    hours: float = 4.0  # time limit: Slurm --time, and the local executor's timeout
    partition: Optional[str] = None
    slurm: Dict[str, Any] = field(default_factory=dict)  # more sbatch options: account, qos, constraint...
    est_hours: Optional[float] = None  # assumed run time per step, used by --dry_run when nothing is measured


@dataclass
class ParallelData:
    """The parallel corpus of one language: `en ||| xx` lines, two line-aligned files, or a Hub dataset
    with a `translation` column (`dataset`, `config`, `split`; e.g. Helsinki-NLP/opus-100, en-es, train)."""

    train_file: Optional[str] = None
    source_file: Optional[str] = None
    target_file: Optional[str] = None
    dataset: Optional[str] = None
    config: Optional[str] = None
    split: str = "train"

    def args(self, prefix: str = "") -> Dict[str, str]:
        """The scripts' corpus arguments; `prefix` ("align_") names the files of the continual mode, whose
        dataset options are the same `--parallel_dataset/--parallel_config/--parallel_split` as run_adjust.py's."""
        if self.dataset:
            return {"parallel_dataset": self.dataset, **({"parallel_config": self.config} if self.config else {}),
                    "parallel_split": self.split}
        if self.train_file:
            return {f"{prefix}train_file": self.train_file}
        return {f"{prefix}source_file": self.source_file, f"{prefix}target_file": self.target_file}


@dataclass
class AlignmentConfig:
    """How word alignments are made.

    `shared` (default): one step per language aligns the whole corpus once (eflomal has no seed, so
    two alignments of the same text differ); every seed's adjustment and the original+continual runs
    then sample their sentences from it with `--aligner pharaoh`, which makes a rerun reproduce the
    first run exactly. `files` gives precomputed Pharaoh files per language instead (no align step).
    `per_run`: run_adjust.py aligns its own sample, as the paper's code does (cached in its output folder).
    """

    mode: str = "shared"
    aligner: str = "eflomal"
    symmetrization: Optional[str] = None
    files: Dict[str, str] = field(default_factory=dict)
    # aligned-pair options (max_sentences, max_words, link_special_tokens...): given to run_adjust.py and to
    # the original_cont runs alike, so that both sample and filter the same pairs for a seed
    args: Dict[str, Any] = field(default_factory=dict)
    resources: Resources = field(default_factory=lambda: Resources(cpus=4, mem_gb=16, hours=2.0))


@dataclass
class AdjustConfig:
    script: str = "run_adjust.py"
    args: Dict[str, Any] = field(default_factory=dict)
    resources: Resources = field(default_factory=lambda: Resources(gpus=1))
    # resources that differ for adjusted_multi (every language in one run), an adjusted_n{size} or a realignment
    regime_resources: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # run_adjust.py's arguments of a realignment regime (adjusted_lora...), over REALIGN_REGIMES' defaults and args
    regime_args: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def resources_for(self, regime: str) -> Resources:
        return dataclasses.replace(self.resources, **self.regime_resources.get(regime, {}))

    def args_for(self, regime: str) -> Dict[str, Any]:
        """A realignment regime's own run_adjust.py arguments (given after `args`)."""
        return {**REALIGN_REGIMES.get(regime, {}), **self.regime_args.get(regime, {})}


@dataclass
class TransformConfig:
    """The fit step of `rotation` / `normalized`: `python -m {module}` (or `script`, a file of one's own) with
    the language's parallel corpus and alignment as run_adjust.py gets them, plus `args`."""

    module: str = "hf_xladjust.evaluation.transforms"
    script: Optional[str] = None
    args: Dict[str, Any] = field(default_factory=dict)
    resources: Resources = field(default_factory=lambda: Resources(gpus=1, hours=1.0))

    @property
    def command(self) -> List[str]:
        return [self.script] if self.script else ["-m", self.module]


@dataclass
class TaskConfig:
    """One task: its script, extra arguments (all steps / per regime) and resources."""

    script: str = ""
    args: Dict[str, Any] = field(default_factory=dict)
    regime_args: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    language_arg: Optional[str] = "eval_languages"  # the script's flag taking the evaluation languages
    trains: bool = True  # False: evaluation only (XSR); no --resume_from_checkpoint, no continual regimes
    model_from: str = "start"  # evaluation-only tasks: "start" (the regime's start model) or a task's output
    # the grid's regimes this task runs (default all); e.g. [original, adjusted] for retrieval of the encoders
    regimes: Optional[List[str]] = None
    outputs: List[str] = field(default_factory=lambda: ["all_results.json"])
    resources: Resources = field(default_factory=lambda: Resources(gpus=1))
    # per regime, resources that differ (continual runs take longer): {adjusted_cont: {hours: 12, est_hours: 1}}
    regime_resources: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def regimes_of(self, grid_regimes: List[str]) -> List[str]:
        """The regimes this task runs; an `adjusted_n{size}` regime goes with `adjusted`."""
        return [r for r in grid_regimes if self.regimes is None or r in self.regimes
                or (regime_size(r) is not None and "adjusted" in self.regimes)]

    @staticmethod
    def inherited_regimes(regime: str) -> List[str]:
        # an adjusted_n{size} run is an `adjusted` run with fewer sentences, a realignment one adjusted otherwise:
        # adjusted's settings, then its own
        return ["adjusted", regime] if regime_size(regime) is not None or regime in REALIGN_REGIMES else [regime]

    def args_for(self, regime: str) -> Dict[str, Any]:
        return {k: v for r in self.inherited_regimes(regime) for k, v in self.regime_args.get(r, {}).items()}

    def resources_for(self, regime: str) -> Resources:
        over = {k: v for r in self.inherited_regimes(regime) for k, v in self.regime_resources.get(r, {}).items()}
        return dataclasses.replace(self.resources, **over)

    @property
    def is_qa(self) -> bool:
        return os.path.basename(self.script) == "run_qa_xl.py"


# What each known task runs by default; the config's values are merged over these.
TASK_DEFAULTS: Dict[str, Dict[str, Any]] = {
    # one mixed-language set per language for every seed (the paired test needs the same examples)
    "nli": {"script": "run_glue_xl.py",
            "args": {"do_train": True, "do_predict": True, "mixed_language_eval": True,
                     "mixed_language_seed": MIXED_LANGUAGE_SEED}},
    "ner": {"script": "run_ner_xl.py", "args": {"do_train": True, "do_predict": True}},
    "qa": {"script": "run_qa_xl.py", "args": {"do_train": True, "do_predict": True}},
    "xsr": {"script": "run_xsr.py", "trains": False, "language_arg": "languages"},
}


@dataclass
class ExecutorConfig:
    """The submitit executor: `local` (one step after another on this machine), `slurm`, or `debug`
    (in this process, for pdb)."""

    cluster: str = "local"
    folder: Optional[str] = None  # submitit's logs and pickles; default RESULTS/_submitit
    slurm: Dict[str, Any] = field(default_factory=dict)  # sbatch options for every step (account, qos...)
    setup: List[str] = field(default_factory=list)  # shell lines run before each Slurm job (module load...)


@dataclass
class GridConfig:
    model_name_or_path: str
    results_dir: str
    languages: List[str]
    tasks: Dict[str, TaskConfig]
    parallel: Dict[str, ParallelData] = field(default_factory=dict)
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    regimes: List[str] = field(default_factory=lambda: ["original", "adjusted", "adjusted_cont"])
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    adjust: AdjustConfig = field(default_factory=AdjustConfig)
    # adjusted_n{size} regimes: the adjustment with `size` sentences per seed (paper, footnote), beside `adjusted`
    parallel_sizes: List[int] = field(default_factory=list)
    transform: TransformConfig = field(default_factory=TransformConfig)
    common_args: Dict[str, Any] = field(default_factory=dict)  # given to run_adjust.py and every task script
    env: Dict[str, str] = field(default_factory=dict)
    keep_checkpoints: bool = False  # False: a finished step's checkpoint-N folders are deleted (disk space)
    python: Optional[str] = None  # interpreter of the steps (default: the one running the grid)
    workdir: Optional[str] = None
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    source: str = ""  # the file this came from

    @property
    def all_regimes(self) -> List[str]:
        """`regimes` with the `adjusted_n{size}` of `parallel_sizes` after `adjusted`, smallest first."""
        sized = [sized_regime(n) for n in sorted(self.parallel_sizes)]
        out: List[str] = []
        for r in self.regimes:
            out += [r] + (sized if r == "adjusted" else [])
        return out

    @property
    def needs_adjustment(self) -> bool:
        """One adjustment per language and seed (`adjust/{lang}/seed{n}`)."""
        return any(r in ("adjusted", "adjusted_cont") for r in self.regimes)

    @property
    def needs_parallel(self) -> bool:
        return any(r != "original" for r in self.regimes)


_SECTIONS = (Resources, ParallelData, AlignmentConfig, AdjustConfig, TransformConfig, ExecutorConfig)


def _build(cls, data: Any, path: str, where: str):
    """A dataclass from a dict, naming the file and key path of anything unknown or mistyped."""
    if not isinstance(data, dict):
        raise InputError(f"{where or 'the file'} must be a mapping, got {type(data).__name__}", path)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields) - {"source"})
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)} in {where or 'the top level'}; "
                         f"known: {', '.join(sorted(set(fields) - {'source'}))}", path)
    kwargs = {}
    for name, value in data.items():
        ftype = fields[name].type
        target = next((c for c in _SECTIONS if ftype is c or ftype == c.__name__), None)
        key = f"{where}.{name}" if where else name
        kwargs[name] = _build(target, value or {}, path, key) if target is not None else value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise InputError(f"{where or 'the top level'}: {e}", path) from None


def _seeds(value: Union[int, List[int]], path: str) -> List[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise InputError(f"seeds: {value} seeds is not a positive count", path)
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        if len(set(value)) != len(value):
            raise InputError(f"seeds: repeated seed in {value}", path)
        return list(value)
    raise InputError(f"seeds: give a count (5 means 0..4) or a list of integers, got {value!r}", path)


def parse_config(data: Dict[str, Any], path: str = "<config>") -> GridConfig:
    """Check and build a `GridConfig` from the parsed file; every error names the file and key."""
    if not isinstance(data, dict):
        raise InputError("the configuration must be a mapping", path)
    data = dict(data)
    for key in ("model_name_or_path", "results_dir", "languages", "tasks"):
        if not data.get(key):
            raise InputError(f"missing required key {key!r}", path)
    if "seeds" in data:
        data["seeds"] = _seeds(data["seeds"], path)
    languages = data["languages"]
    if isinstance(languages, str):
        languages = data["languages"] = languages.split()
    if not all(isinstance(x, str) and x and x not in ("all", MULTI) and "/" not in x for x in languages):
        raise InputError(f"languages: expected language codes, got {languages!r}", path)
    tasks = data.pop("tasks")
    if isinstance(tasks, list):
        tasks = {t: {} for t in tasks}
    if not isinstance(tasks, dict):
        raise InputError("tasks: a list of task names or a mapping name -> settings", path)
    parallel = data.pop("parallel", {}) or {}
    if not isinstance(parallel, dict):
        raise InputError("parallel: a mapping language -> {train_file | source_file + target_file | dataset}", path)
    cfg = _build(GridConfig, {**data, "tasks": {}, "parallel": {}}, path, "")
    cfg.source = path
    for regime in cfg.regimes:
        if regime_size(regime) is not None:
            raise InputError(f"regimes: {regime} is not listed; give its size in parallel_sizes: "
                             f"[{regime_size(regime)}] (with adjusted among the regimes)", path)
        if regime not in REGIMES:
            raise InputError(f"regimes: unknown regime {regime!r}; choose from {', '.join(REGIMES)} (and "
                             "adjusted_n{size} through parallel_sizes)", path)
    _check_parallel_sizes(cfg, path)

    for name, settings in tasks.items():
        settings = settings or {}
        if not isinstance(settings, dict):
            raise InputError(f"tasks.{name}: expected a mapping of settings", path)
        defaults = TASK_DEFAULTS.get(name, {})
        merged = {**defaults, **settings}
        merged["args"] = {**defaults.get("args", {}), **(settings.get("args") or {})}
        if not merged.get("script"):
            raise InputError(f"tasks.{name}: not a known task ({', '.join(KNOWN_TASKS)}); give its 'script'", path)
        cfg.tasks[name] = _build(TaskConfig, merged, path, f"tasks.{name}")
        for key in ("regime_args", "regime_resources"):
            for regime, value in getattr(cfg.tasks[name], key).items():
                if regime not in REGIMES and regime_size(regime) not in cfg.parallel_sizes:
                    raise InputError(f"tasks.{name}.{key}: unknown regime {regime!r}", path)
                if not isinstance(value, dict):
                    raise InputError(f"tasks.{name}.{key}.{regime}: expected a mapping", path)
        for regime, value in cfg.tasks[name].regime_resources.items():
            _build(Resources, value, path, f"tasks.{name}.regime_resources.{regime}")

    for lang, spec in parallel.items():
        if isinstance(spec, str):
            spec = {"train_file": spec}
        data_cfg = _build(ParallelData, spec, path, f"parallel.{lang}")
        given = [bool(data_cfg.train_file), bool(data_cfg.source_file or data_cfg.target_file), bool(data_cfg.dataset)]
        if sum(given) != 1 or bool(data_cfg.source_file) != bool(data_cfg.target_file) or (
                (data_cfg.config or data_cfg.split != "train") and not data_cfg.dataset):
            raise InputError(f"parallel.{lang}: give train_file, source_file and target_file, or dataset (with "
                             "config and split)", path)
        if data_cfg.dataset:
            data_cfg.dataset = canonical_dataset_id(data_cfg.dataset, f"parallel.{lang}.dataset")
        cfg.parallel[lang] = data_cfg

    for regime, value in cfg.adjust.regime_resources.items():
        if (regime != "adjusted_multi" and regime not in REALIGN_REGIMES
                and regime_size(regime) not in cfg.parallel_sizes):
            raise InputError(f"adjust.regime_resources: {regime!r} is not adjusted_multi or an adjusted_n{{size}} "
                             f"of parallel_sizes {cfg.parallel_sizes} (or a realignment regime: "
                             f"{', '.join(REALIGN_REGIMES)})", path)
        _build(Resources, value, path, f"adjust.regime_resources.{regime}")
    _check_realign_args(cfg, path)
    if cfg.alignment.mode not in ("shared", "per_run"):
        raise InputError(f"alignment.mode: 'shared' or 'per_run', got {cfg.alignment.mode!r}", path)
    if cfg.needs_parallel:
        missing = [lang for lang in cfg.languages if lang not in cfg.parallel]
        if missing:
            raise InputError(f"parallel: no parallel corpus for {', '.join(missing)} (regimes {cfg.regimes} "
                             "need one per language)", path)
    for name, task in cfg.tasks.items():
        if task.regimes is not None:
            outside = [r for r in task.regimes if r not in cfg.all_regimes]
            if outside or not task.regimes:
                raise InputError(f"tasks.{name}.regimes: {outside or 'an empty list'} not among the grid's regimes "
                                 f"{cfg.regimes}", path)
        if not task.trains:
            cont = [r for r in task.regimes_of(cfg.regimes) if r.endswith("_cont")]
            if task.model_from == "start" and cont:
                raise InputError(f"tasks.{name}: an evaluation-only task has no continual regime ({', '.join(cont)})"
                                 "; set model_from to a training task (e.g. qa)", path)
            if task.model_from != "start" and task.model_from not in cfg.tasks:
                raise InputError(f"tasks.{name}.model_from: {task.model_from!r} is not a task of this grid", path)
            if task.model_from != "start" and not cfg.tasks[task.model_from].trains:
                raise InputError(f"tasks.{name}.model_from: {task.model_from!r} does not train a model", path)
    _check_transform_regimes(cfg, path)
    if cfg.executor.cluster not in ("local", "slurm", "debug"):
        raise InputError(f"executor.cluster: local, slurm or debug, got {cfg.executor.cluster!r}", path)
    return cfg


def _check_realign_args(cfg: GridConfig, path: str) -> None:
    """adjust.regime_args: mappings for realignment regimes only; adjusted_lora keeps LoRA on and merged
    (the task scripts fine-tune `<adjust step>/merged`)."""
    for regime, value in cfg.adjust.regime_args.items():
        if regime not in REALIGN_REGIMES:
            raise InputError(f"adjust.regime_args: {regime!r} is not a realignment regime "
                             f"({', '.join(REALIGN_REGIMES)}); adjusted's arguments go in adjust.args", path)
        if not isinstance(value, dict):
            raise InputError(f"adjust.regime_args.{regime}: expected a mapping", path)
    lora = {**cfg.adjust.args, **cfg.adjust.args_for("adjusted_lora")}
    if "adjusted_lora" in cfg.regimes and not (lora.get("lora_r") and lora.get("merge_lora") is True):
        raise InputError("adjust.regime_args.adjusted_lora: needs lora_r > 0 and merge_lora true (the tasks "
                         "fine-tune the merged weights)", path)
    for regime in REALIGN_REGIMES:
        if regime not in cfg.regimes:
            continue
        given = {**cfg.adjust.args, **cfg.adjust.args_for(regime)}
        if regime != "adjusted_lora" and given.get("lora_r"):
            raise InputError(f"adjust: {regime} with lora_r would be a LoRA adjustment; use adjusted_lora", path)


def _check_parallel_sizes(cfg: GridConfig, path: str) -> None:
    sizes = cfg.parallel_sizes
    if not isinstance(sizes, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                              for n in sizes):
        raise InputError(f"parallel_sizes: a list of positive sentence counts, got {sizes!r}", path)
    if len(set(sizes)) != len(sizes):
        raise InputError(f"parallel_sizes: repeated size in {sizes}", path)
    if sizes and "adjusted" not in cfg.regimes:
        raise InputError(f"parallel_sizes: the adjusted_n{{size}} regimes go with adjusted, which is not among the "
                         f"regimes {cfg.regimes}", path)
    full = cfg.adjust.args.get("max_sentences", cfg.alignment.args.get("max_sentences"))
    if full in sizes:
        raise InputError(f"parallel_sizes: {full} is the max_sentences of the adjusted regime itself", path)


def _check_transform_regimes(cfg: GridConfig, path: str) -> None:
    """rotation / normalized evaluate the Original fine-tuned models: the task (or the task whose models an
    evaluation-only task reads) must run `original`; run_qa_xl.py has no --representation_transform."""
    for name, task in cfg.tasks.items():
        transforms = [r for r in task.regimes_of(cfg.all_regimes) if r in TRANSFORM_REGIMES]
        if not transforms:
            continue
        if task.is_qa or name == "qa":
            raise InputError(f"tasks.{name}.regimes: QA does not support {', '.join(transforms)} (no "
                             f"--representation_transform in {task.script}); list the task's regimes without "
                             "them", path)
        owner = name if task.trains else task.model_from
        if owner == "start":
            continue
        if "original" not in cfg.tasks[owner].regimes_of(cfg.all_regimes):
            raise InputError(f"tasks.{name}: {' and '.join(transforms)} {'is' if len(transforms) == 1 else 'are'} "
                             f"fitted on and applied to the Original fine-tuned models of {owner}; add original "
                             f"to the regimes (and to tasks.{owner}.regimes if it lists them)", path)


def load_config(path: str) -> GridConfig:
    """Read a YAML (.yaml/.yml) or JSON file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise InputError(f"cannot read the configuration: {e.strerror}", path) from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"invalid JSON: {e.msg}", path, e.lineno) from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise InputError(f"invalid YAML: {getattr(e, 'problem', None) or e}", path,
                             mark.line + 1 if mark is not None else None) from None
    return parse_config(data, os.path.abspath(path))
