"""Writing result files so that a crash never leaves a half-written file that looks complete."""
import contextlib
import json
import os
import tempfile
from typing import Any, Iterable


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
