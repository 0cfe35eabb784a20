"""The watermark key, read from where a person keeps a secret: an environment variable or
a file (text in a job file travels in the farm's queue). Errors name the variable or the
file, never the key."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config.given_files import read_regular
from pipeline.errors import JobError

MAX_KEY = 4096
MAX_KEY_FILE = 64 << 10   # a key is at most MAX_KEY characters; a bigger file is not a key file


def key_from_env(name: str, field: str) -> str:
    key = os.environ.get(name, "")
    if not key:
        raise JobError(field, name, "no such environment variable, or it is empty")
    return _checked(key, field)


def key_from_file(path: Path, field: str) -> str:
    data = read_regular(path, field, MAX_KEY_FILE)   # a FIFO or /dev/zero: refused, not read
    try:
        key = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise JobError(field, str(path), "cannot be read as a UTF-8 text file (UnicodeDecodeError)") from None
    if not key:
        raise JobError(field, str(path), "the file is empty")
    return _checked(key, field)


def _checked(key: str, field: str) -> str:
    if len(key) > MAX_KEY:
        raise JobError(field, "(not shown)", f"the key is over {MAX_KEY} characters")
    return key
