"""Reading input lines so that bad bytes name their file and line; checking every input path before a run
starts; writing result files so that a crash never leaves a half-written file that looks complete."""
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, List, NamedTuple, Optional, Tuple

from hf_xladjust.errors import InputError


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", encoding: str = "utf-8"):
    """Open a temporary file beside `path` for writing; it replaces `path` only when the block ends
    without an exception (a rerun, a reader or a resumable pipeline never sees a partial file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding,
                       **({} if "b" in mode else {"newline": "\n"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str, obj: Any, **kwargs) -> None:
    """`obj` as indented UTF-8 JSON, written atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, **kwargs)
        f.write("\n")


def write_jsonl(path: str, records: Iterable[Any]) -> None:
    """One JSON object per line, written atomically."""
    with atomic_write(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_lines(path: str) -> List[bytes]:
    """The lines of a file as bytes, without the trailing ``\\n`` or ``\\r\\n``.

    Split on the newline byte only (never on the other line breaks `str.splitlines` knows, which can
    occur inside a sentence). A final line without a newline counts; the empty piece after a final
    newline does not.
    """
    data = Path(path).read_bytes()
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def decode_line(raw: bytes, path: str, line_no: int, encoding: str = "utf-8") -> str:
    """Decode one line; an undecodable byte raises InputError naming the file and line. A byte-order
    mark at the start of line 1 is dropped (it is not part of the first word)."""
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise InputError(f"cannot decode the line as {encoding}: byte {raw[e.start:e.start + 1]!r} at byte "
                         f"{e.start + 1} of the line is not valid {encoding.upper()} ({e.reason})",
                         path, line_no) from None
    return text.lstrip("\ufeff") if line_no == 1 else text


def read_text_lines(path: str, encoding: str = "utf-8") -> List[Tuple[int, str]]:
    """`(line number, text)` for every line of a text file, numbered from 1, without the line break
    (also a stray ``\\r`` before it). A file that cannot be opened or an undecodable line raises
    InputError naming the file (and line)."""
    try:
        lines = read_lines(path)
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror})", path) from None
    return [(line_no, decode_line(raw, path, line_no, encoding).rstrip("\r"))
            for line_no, raw in enumerate(lines, 1)]


class InputPath(NamedTuple):
    """A path a run reads, with the option it came from (named in the error when it is missing)."""

    flag: str  # e.g. "--train_file", "--test_file_pattern (es)"
    path: str
    kind: str = "file"  # "file", "folder", or "any" (a file or a folder)


def pattern_inputs(flag: str, pattern: Optional[str], languages: Iterable[str]) -> List[InputPath]:
    """One input per language of a `{lang}` file pattern (none when the pattern is not given)."""
    if not pattern:
        return []
    return [InputPath(f"{flag} ({lang})", pattern.format(lang=lang)) for lang in dict.fromkeys(languages)]


def input_problem(item: InputPath, base: str = "") -> Optional[str]:
    """Why `item` cannot be read (relative paths from `base`), or None when it can."""
    path = os.path.join(base, os.path.expanduser(item.path))
    if os.path.isdir(path):
        return "a folder, not a file" if item.kind == "file" else None
    if not os.path.exists(path):
        return {"file": "no such file", "folder": "no such folder"}.get(item.kind, "no such file or folder")
    if item.kind == "folder":
        return "not a folder"
    try:
        open(path, "rb").close()
    except OSError as e:
        return f"cannot read ({e.strerror})"
    return None


def input_problems(inputs: Iterable[InputPath], base: str = "") -> List[Tuple[InputPath, str]]:
    """`(input, why)` for every input that cannot be read; a file inside a missing folder that is itself an
    input is left to the folder's problem."""
    problems = [(item, why) for item in dict.fromkeys(inputs) if (why := input_problem(item, base))]
    gone = [os.path.join(item.path, "") for item, _ in problems if item.kind != "file"]
    return [(item, why) for item, why in problems
            if item.kind != "file" or not any(item.path.startswith(folder) for folder in gone)]


def check_input_files(inputs: Iterable[InputPath]) -> None:
    """Every input a run will read exists and opens, checked when the script starts: a typo in any path is
    one InputError line naming it (all of them, if several), before a model loads or a corpus is aligned."""
    problems = input_problems(inputs)
    if len(problems) == 1:
        item, why = problems[0]
        raise InputError(f"{why} ({item.flag})", item.path)
    if problems:
        raise InputError(f"{len(problems)} inputs cannot be read: "
                         + "; ".join(f"{item.path} ({item.flag}): {why}" for item, why in problems))
