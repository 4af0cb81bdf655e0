"""Small pieces every run_*.py script shares: the record of its arguments and its error exit."""
import dataclasses
import json
import os
import sys

from .errors import InputError


def write_run_args(output_dir: str, **sections) -> None:
    """Write `run_args.json`: each section a dataclass of parsed arguments (TrainingArguments
    included) or a plain value, so a run can be repeated and traced back (e.g. to its f0)."""
    def plain(value):
        if hasattr(value, "to_dict"):
            return value.to_dict()
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value

    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "run_args.json"), "w", encoding="utf-8") as f:
        json.dump({name: plain(value) for name, value in sections.items()}, f, indent=2, default=str)


def run_main(main) -> None:
    """Run a script's `main()`; bad input ends it with one line naming file and line, exit status 1."""
    try:
        main()
    except InputError as err:
        sys.exit(f"{os.path.basename(sys.argv[0])}: error: {err}")
