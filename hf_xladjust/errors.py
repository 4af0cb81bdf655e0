"""One error type for bad input, so every reader reports the file and line the same way."""
from typing import Optional


class InputError(ValueError):
    """Bad user input: the message names the file (and line, 1-based) it comes from."""

    def __init__(self, message: str, path: Optional[str] = None, line: Optional[int] = None):
        self.path, self.line, self.reason = path, line, message
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(where + message)
