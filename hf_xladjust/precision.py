"""bf16 on the CPU: detection, the one-flag `--bf16 true` of every script, and the record of what ran.

A CPU with AMX (`amx_bf16`) or AVX512-BF16 (`avx512_bf16`) runs bf16 matrix products natively (2-10x the fp32
rate); under `torch.autocast("cpu", dtype=torch.bfloat16)` the Trainer's steps run there. transformers refuses
`--bf16` without a GPU unless `--use_cpu` is also given; `prepare_bf16_arguments` adds it on a machine without
an accelerator, so `--bf16 true` alone works, and refuses with one line on a CPU without bf16 support (where
autocast would emulate bf16, slower than fp32).

`HF_XLADJUST_PRECISION=auto` (the demo's and the offline grids' setting) turns bf16 on where the CPU has it and
keeps fp32 elsewhere; scripts keep fp32 as their default. `HF_XLADJUST_CPU_FLAGS` (space-separated flags, empty
for none) replaces the detection, for tests and for a CPU whose flags are misreported.
"""
import contextlib
import json
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from hf_xladjust.errors import InputError

logger = logging.getLogger(__name__)

# CPU flags (Linux /proc/cpuinfo names) that run bf16 products natively, best first; `bf16` is Arm's (BF16 MMLA).
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
FLAGS_ENV = "HF_XLADJUST_CPU_FLAGS"
PRECISION_ENV = "HF_XLADJUST_PRECISION"
PRECISION_CHOICES = ("fp32", "auto")
_TRUE = ("true", "yes", "t", "y", "1")


def cpu_flags() -> List[str]:
    """The CPU's feature flags: `HF_XLADJUST_CPU_FLAGS` when set, else /proc/cpuinfo's (Linux), else those
    torch's own checks confirm (other systems)."""
    if FLAGS_ENV in os.environ:
        return os.environ[FLAGS_ENV].split()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86, Arm
                    return value.split()
    except OSError:
        pass
    import torch

    found = []
    checks = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    for flag, check in checks.items():
        fn = getattr(torch.cpu, check, None)
        if fn is not None and fn():
            found.append(flag)
    return found


def cpu_bf16_support(flags: Optional[Sequence[str]] = None) -> Optional[str]:
    """The CPU feature that runs bf16 natively (`amx_bf16`, `avx512_bf16` or Arm's `bf16`), or None."""
    flags = set(cpu_flags() if flags is None else flags)
    return next((f for f in CPU_BF16_FLAGS if f in flags), None)


def accelerator_available() -> bool:
    """A device transformers trains bf16 on without `--use_cpu` (CUDA, XPU, ...)."""
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    return bool(is_torch_bf16_gpu_available() or is_torch_xla_available())


def refusal(what: str = "--bf16") -> str:
    return (f"{what}: this CPU has no native bf16 ({' / '.join(CPU_BF16_FLAGS)} not among its flags) and no GPU "
            "is available; run in fp32 (drop the flag)")


def check_cpu_bf16(what: str = "--bf16") -> str:
    """The CPU's bf16 feature, or an InputError of one line when it has none."""
    feature = cpu_bf16_support()
    if feature is None:
        raise InputError(refusal(what))
    return feature


AMP_DTYPES = ("fp16", "bf16")


def evaluation_autocast(device, amp: Optional[str]):
    """The autocast of an evaluator's forward pass (`amp` None, "fp16" or "bf16"); bf16 on a CPU without native
    support is refused with one line. Pooling, scores and distances stay fp32: the callers cast and score
    outside it."""
    import torch

    if amp not in (None, *AMP_DTYPES):
        raise ValueError(f"amp must be None, 'fp16' or 'bf16', got {amp!r}")
    device_type = getattr(device, "type", str(device))
    if amp == "bf16" and device_type == "cpu":
        check_cpu_bf16("amp bf16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


def resolve_amp(amp: str, device_type: str) -> Optional[str]:
    """The benchmarks' `--amp auto|no|fp16|bf16` as None, "fp16" or "bf16": auto is bf16 on a CUDA device with
    bf16 or on a CPU with native bf16 (said in their output), else None (fp32)."""
    if amp == "auto":
        if device_type == "cpu":
            return "bf16" if cpu_bf16_support() else None
        import torch

        return "bf16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else None
    return None if amp in ("no", None) else amp


def auto_bf16() -> bool:
    """Whether `HF_XLADJUST_PRECISION=auto` turns bf16 on here: no accelerator and a CPU with native bf16."""
    mode = os.environ.get(PRECISION_ENV, "fp32").strip().lower() or "fp32"
    if mode not in PRECISION_CHOICES:
        raise InputError(f"{PRECISION_ENV}={mode!r}: expected one of {', '.join(PRECISION_CHOICES)}")
    return mode == "auto" and not accelerator_available() and cpu_bf16_support() is not None


def _flag(value: Any) -> bool:
    return value is True or str(value).strip().lower() in _TRUE


def prepare_bf16_arguments(parser, args: Optional[List[str]] = None, json_args: Optional[Dict] = None):
    """Command-line arguments (or a JSON file's dict) with bf16 made to work on the CPU, before the dataclasses
    are built (TrainingArguments refuses CPU bf16 in its `__post_init__`):
    - `--bf16` (or `--bf16_full_eval`) on a machine without an accelerator: checks the CPU and adds
      `--use_cpu true` where the parser has it (TrainingArguments; run_xsr.py has no such field);
    - neither `--bf16` nor `--fp16` given and `HF_XLADJUST_PRECISION=auto` where the CPU has native bf16:
      adds `--bf16 true` (and `--use_cpu true`).
    Returns the same kind it was given (list or dict)."""
    dests = {a.dest for a in parser._actions}
    if "bf16" not in dests:
        return json_args if json_args is not None else args
    if json_args is not None:
        values, given = dict(json_args), set(json_args)
    elif not any("bf16" in a for a in args) and not os.environ.get(PRECISION_ENV):
        return args  # nothing to do: skip the pre-parse
    else:
        namespace, _ = parser.parse_known_args(list(args))
        values = vars(namespace)
        given = {a.dest for a in parser._actions for s in a.option_strings
                 if any(x == s or x.startswith(s + "=") for x in args)}
    wants = _flag(values.get("bf16")) or _flag(values.get("bf16_full_eval"))
    add: Dict[str, str] = {}
    if not wants and not ({"bf16", "fp16", "bf16_full_eval", "fp16_full_eval"} & given) and auto_bf16():
        add["bf16"] = "true"
        wants = True
    if wants and not accelerator_available() and not _flag(values.get("use_cpu")):
        check_cpu_bf16()
        if "use_cpu" in dests:
            add["use_cpu"] = "true"
    if not add:
        return json_args if json_args is not None else args
    if json_args is not None:
        return {**json_args, **{k: True for k in add}}
    return list(args) + [x for k, v in add.items() for x in (f"--{k}", v)]


def precision_record(bf16: bool, fp16: bool = False, device: str = "cpu") -> Dict[str, Any]:
    """What `run_args.json` records and the log says: the compute dtype, the device, and the CPU feature."""
    record: Dict[str, Any] = {"precision": "bf16" if bf16 else "fp16" if fp16 else "fp32", "device": device,
                              "autocast": bool(bf16 or fp16)}
    if device == "cpu":
        record["cpu_bf16"] = cpu_bf16_support()
    if os.environ.get(PRECISION_ENV):
        record[PRECISION_ENV] = os.environ[PRECISION_ENV]
    return record


def describe(record: Dict[str, Any]) -> str:
    text = f"precision: {record['precision']} on {record['device']}"
    if record["autocast"]:
        text += " (autocast; losses, f0 targets, retrieval vectors and distances in fp32)"
    if record["device"] == "cpu":
        text += f"; CPU bf16 support: {record.get('cpu_bf16') or 'none'}"
    if "attention" in record:
        text += f"; attention: {record['attention']}"
    return text


def training_precision(training_args) -> Dict[str, Any]:
    """The precision record of TrainingArguments (bf16/fp16 and the device the Trainer will use)."""
    device = training_args.device
    record = precision_record(bool(training_args.bf16), bool(training_args.fp16), getattr(device, "type", str(device)))
    if record["precision"] == "bf16" and record["device"] == "cpu":
        record["attention"] = f"sdpa math backend for steps of <= {MATH_ATTENTION_MAX_LENGTH} tokens, flash above"
    return record


# Under bf16 on the CPU, torch 2.13's flash-attention kernel (forward + backward) took 0.16-0.20 s per layer and
# 6,144 tokens whatever the length, 3x its fp32 time at short lengths, while the math backend (bf16 matrix
# products) took 0.065 s at 32 tokens, 0.079 s at 64 and 0.175 s at 128, and more than flash from 192 on
# (AVX512-BF16 without AMX, one thread). Per step: a continual NLI step of e5-small (52 tokens) went from 1.3x to
# 1.75x faster than fp32 with the math backend, a QA step of 384-token windows is 1.5x with flash and 1.25x with
# math (benchmarks/bench_precision.py).
MATH_ATTENTION_MAX_LENGTH = 128


def batch_length(inputs: Dict[str, Any]) -> int:
    """The longest padded sequence of a batch (task `input_ids`, or an aligned-pair batch's two sides)."""
    lengths = [v.shape[-1] for k, v in inputs.items() if k.endswith("input_ids") and hasattr(v, "shape")]
    return max(lengths, default=0)


def math_attention():
    """A context in which scaled-dot-product attention uses torch's math backend (bf16 matrix products)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def cpu_bf16_attention(inputs: Dict[str, Any]):
    """The attention kernel of one bf16 training step on the CPU: the math backend for batches of at most
    MATH_ATTENTION_MAX_LENGTH tokens (see there), torch's choice (flash) for longer ones."""
    if 0 < batch_length(inputs) <= MATH_ATTENTION_MAX_LENGTH:
        return math_attention()
    return contextlib.nullcontext()


def setup_training_precision(training_args, log: logging.Logger) -> Dict[str, Any]:
    """Say the precision a training script runs in; returns the record run_args.json keeps."""
    record = training_precision(training_args)
    log.warning(describe(record))  # shown at the default log level, as the HF examples' "16-bits training" line
    return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m hf_xladjust.precision`: this machine's CPU bf16 support as JSON (the Makefile and demo use it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    feature = cpu_bf16_support()
    if argv == ["--auto"]:  # print the precision HF_XLADJUST_PRECISION=auto would choose: bf16 or fp32
        print("bf16" if feature and not accelerator_available() else "fp32")
        return 0
    print(json.dumps({"cpu_bf16": feature, "flags": sorted(set(cpu_flags()) & {*CPU_BF16_FLAGS, "amx_tile"})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
