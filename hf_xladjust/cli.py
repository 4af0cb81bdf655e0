"""What every run_*.py script shares: the model arguments and their loading, logging set-up, the CPU thread
default, the record of its arguments and its one-line error exit."""
import argparse
import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hf_xladjust.errors import InputError
from hf_xladjust.files import InputPath, pattern_inputs, write_json

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which model, config and tokenizer to start from (the fields of the HF examples)."""

    model_name_or_path: str = field(metadata={"help": "Hub name or local folder of the (adjusted) encoder."})
    config_name: Optional[str] = field(default=None, metadata={"help": "Config, if not the model's."})
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Where Hub downloads are stored."})
    use_fast_tokenizer: bool = field(
        default=True,
        metadata={"help": "Use a fast (tokenizers) tokenizer. run_adjust.py, run_ner_xl.py, run_qa_xl.py and "
                          "continual alignment need one (word ids, offsets) and stop with a slow one."},
    )
    model_revision: str = field(default="main", metadata={"help": "Model version: branch, tag or commit id."})
    token: Optional[str] = field(default=None, metadata={"help": "Hub token for private models or datasets."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the Hub repository."})

    def config_source(self) -> Tuple[str, str]:
        """The config's name or path, and the option it comes from (named when it cannot be loaded)."""
        return (self.config_name, "--config_name") if self.config_name else (self.model_name_or_path,
                                                                            "--model_name_or_path")

    def tokenizer_source(self) -> Tuple[str, str]:
        """The tokenizer's name or path, and the option it comes from."""
        return (self.tokenizer_name, "--tokenizer_name") if self.tokenizer_name else (self.model_name_or_path,
                                                                                     "--model_name_or_path")

    def hub_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for every `from_pretrained` of the config, tokenizer and model (and f0), so
        that --cache_dir, --model_revision, --token and --trust_remote_code reach each of them."""
        return {"cache_dir": self.cache_dir, "revision": self.model_revision, "token": self.token,
                "trust_remote_code": self.trust_remote_code}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written (its example keeps its lines), every flag with its default."""


def script_parser(dataclass_types, doc: Optional[str], prog: Optional[str] = None, require_output_dir: bool = True,
                  **kwargs):
    """A script's HfArgumentParser whose --help starts with what the script does and an example (`doc`, the
    script's docstring), not with a usage line listing hundreds of flags; `--output_dir`, where a parser has
    one, is required (unless `require_output_dir=False`), as in the HF examples (TrainingArguments 5.x
    would otherwise write ./trainer_output);
    and a parse error is one line, as the scripts' other errors."""
    from transformers import HfArgumentParser

    class ScriptArgumentParser(HfArgumentParser):
        def error(self, message):
            self.exit(2, f"{self.prog}: error: {message} (--help lists the arguments)\n")

    parser = ScriptArgumentParser(dataclass_types, prog=prog, description=(doc or "").strip(),
                                  formatter_class=_HelpFormatter, **kwargs)
    parser.usage = f"{parser.prog} [--help] [ARGUMENTS]"
    for action in parser._actions:
        if require_output_dir and action.dest == "output_dir":
            action.required = True
    return parser


def parse_arguments(parser) -> tuple:
    """The HF examples' parsing (a single `.json` argument is a file of arguments), with the
    `__post_init__` checks' ValueErrors turned into InputErrors, so that `run_main` reports them as
    one line instead of a traceback."""
    from hf_xladjust.precision import prepare_bf16_arguments

    try:
        if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
            with open(os.path.abspath(sys.argv[1]), encoding="utf-8") as f:
                values = json.load(f)
            return parser.parse_dict(prepare_bf16_arguments(parser, json_args=values))
        # `--bf16 true` on a CPU-only machine: `--use_cpu true` added, or a one-line refusal (hf_xladjust.precision)
        return parser.parse_args_into_dataclasses(args=prepare_bf16_arguments(parser, sys.argv[1:]))
    except InputError:
        raise
    except ValueError as err:
        raise InputError(str(err)) from None


def merged_arguments(*parsed) -> argparse.Namespace:
    """The parsed dataclasses' fields in one namespace, as the parser's own namespace holds them: what a
    script's `input_files(args)` reads, in `main()` and in the grid's dry run (which passes the namespace)."""
    return argparse.Namespace(**{name: value for obj in parsed for name, value in vars(obj).items()})


def task_input_files(args, languages: Sequence[str]) -> List[InputPath]:
    """The data files of an NLI or NER run (`--train_file`, `{lang}` validation and test patterns) for the
    splits it trains or evaluates on; Hub data (`--dataset_name`) has none."""
    inputs = [InputPath("--train_file", args.train_file)] if args.do_train and args.train_file else []
    if args.do_eval:
        inputs += pattern_inputs("--validation_file_pattern", args.validation_file_pattern, languages)
    if args.do_predict:
        inputs += pattern_inputs("--test_file_pattern", args.test_file_pattern, languages)
    return inputs


def _looks_local(name: str) -> bool:
    """A path rather than a Hub id (`namespace/name`): written as a path, or its first folder exists here."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name:
        return True
    return "/" in name and os.path.isdir(name.split("/")[0])


def load_pretrained(auto_class, name_or_path: str, flag: str, **kwargs):
    """`auto_class.from_pretrained(name_or_path, **kwargs)`, where a config, tokenizer or model that cannot be
    found or read is one InputError line naming it and the option it came from, instead of transformers'
    OSError (or ValueError) traceback. The scripts load config and tokenizer this way before reading any
    data, so that a misspelled path fails in seconds, not after the word aligner."""
    try:
        return auto_class.from_pretrained(name_or_path, **kwargs)
    except InputError:
        raise
    except (OSError, ValueError) as e:
        kind = auto_class.__name__
        what = "config" if "Config" in kind else "tokenizer" if "Tokenizer" in kind else "model"
        lines = str(e).strip().splitlines()
        detail = (lines[0] if lines else type(e).__name__)[:300]
        if os.path.isdir(os.path.expanduser(name_or_path)):
            reason = f"cannot load the {what} from this folder ({detail})"
        elif _looks_local(name_or_path):
            reason = "no such folder"
        else:
            reason = f"not a folder, and no {what} of this name can be loaded from the Hub or its cache ({detail})"
        raise InputError(f"{flag}: {reason}", name_or_path) from None


OVERWRITE_HELP = ("Run into an --output_dir that already holds a finished run, replacing its results; without "
                  "it (or --resume_from_checkpoint) the script refuses, as the HF examples do.")


def check_output_dir(output_dir: str, finished_file: str, overwrite: bool,
                     resume_from_checkpoint: Optional[str] = None) -> None:
    """Refuse to retrain silently over a finished run: `finished_file` is what the script writes once it
    is done. The grid never trips on it: it empties a step's folder first, or resumes it."""
    if overwrite or resume_from_checkpoint:
        return
    if os.path.exists(os.path.join(output_dir, finished_file)):
        raise InputError(f"holds a finished run ({finished_file}); pass --overwrite_output_dir true to "
                         "replace it, or choose another --output_dir", output_dir)


def setup_logging(training_args, logger: logging.Logger) -> None:
    """The HF examples' logging set-up: stdout, the process's log level for transformers, datasets,
    this package and the script's own logger."""
    import datasets
    import transformers

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        datefmt="%m/%d/%Y %H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logging.getLogger("hf_xladjust").setLevel(log_level)
    if hasattr(training_args, "bf16"):  # logs the precision (and picks bf16's CPU attention kernel)
        from hf_xladjust.precision import setup_training_precision

        setup_training_precision(training_args, logger)


CPU_THREADS_HELP = ("set OMP_NUM_THREADS=N for N threads: faster only on cores that nothing else uses "
                    "(docs/benchmarks.md, CPU threads; benchmarks/bench_threads.py)")


def set_cpu_threads(device: str) -> Dict[str, Any]:
    """Torch's intra-op threads for a run on `device`, set once where the script starts; returns what was used.

    Torch starts one OpenMP thread per core of the process's CPU set. When other processes (another run, a
    second grid, someone's tests) share those cores, every parallel region waits for a descheduled thread
    while the others spin (libgomp's active wait; OMP_WAIT_POLICY=PASSIVE removes most of it), and a tiny
    CPU run trained 9x slower than with OMP_NUM_THREADS=1 (11x with two runs at once, 12-23x for a 4 x 256
    model), against 1.5x faster at best on lightly loaded cores (benchmarks/bench_threads.py; docs/benchmarks.md,
    CPU threads). So a CPU run with OMP_NUM_THREADS unset gets the cores its Slurm job reserved
    (SLURM_CPUS_PER_TASK, shared among the job's local processes), otherwise one thread. A set
    OMP_NUM_THREADS is left to torch, which reads it itself; GPU runs keep torch's default."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    user = os.environ.get("OMP_NUM_THREADS")
    if user:
        source = "OMP_NUM_THREADS"
    elif device != "cpu":
        source = f"torch's default ({device} run)"
    else:
        reserved = os.environ.get("SLURM_CPUS_PER_TASK", "")
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        if reserved.isdigit() and int(reserved) > 0:
            torch.set_num_threads(max(1, min(int(reserved), cores) // local_processes))
            source = "hf_xladjust CPU default: SLURM_CPUS_PER_TASK"
        else:
            torch.set_num_threads(1)
            source = "hf_xladjust CPU default: 1"
    threads = {"torch_threads": torch.get_num_threads(), "source": source, "OMP_NUM_THREADS": user,
               "cores": cores}
    if source.startswith("hf_xladjust") and os.environ.get("LOCAL_RANK", "0") == "0":  # once, not per process
        logger.warning("CPU run: %d torch thread(s) (%s; %d core(s) available); %s", threads["torch_threads"],
                    source, cores, CPU_THREADS_HELP)
    return threads


def write_run_args(output_dir: str, **sections) -> None:
    """Write `run_args.json`: each section a dataclass of parsed arguments (TrainingArguments
    included) or a plain value, so a run can be repeated and traced back (e.g. to its f0)."""
    def plain(value):
        if hasattr(value, "to_dict"):
            return value.to_dict()
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value

    record = {name: plain(value) for name, value in sections.items()}
    if "precision" not in record:  # the precision the run used, from its TrainingArguments
        from hf_xladjust.precision import training_precision

        args = next((v for v in sections.values() if hasattr(v, "bf16") and hasattr(v, "fp16")
                     and hasattr(getattr(v, "device", None), "type")), None)
        if args is not None:
            record["precision"] = training_precision(args)
    write_json(os.path.join(output_dir, "run_args.json"), record, default=str)


def end_process_group() -> None:
    """Under `accelerate launch`, wait for every process and tear the process group down before exit: a process
    that exits first with its gloo group alive can abort in the group's destructor ("terminate called without an
    active exception", SIGABRT), failing a run whose outputs are complete."""
    dist = sys.modules.get("torch.distributed")  # never imported: nothing to tear down
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run_main(main) -> None:
    """Run a script's `main()`; bad input ends it with one line naming file and line, exit status 1."""
    try:
        main()
    except InputError as err:
        sys.exit(f"{os.path.basename(sys.argv[0])}: error: {err}")
    end_process_group()
