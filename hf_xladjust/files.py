"""Reading input lines so that bad bytes name their file and line; writing result files so that a crash
never leaves a half-written file that looks complete."""
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, List, Tuple

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
