"""Files written whole or not at all.

Every file the harness writes for someone else to read (results, reports,
cache records, images) goes to a temp file beside its place and is renamed
over it: a reader, an interrupted run or a crash sees the old file or the new
one, never half of one, and what was written before stays intact. The temp
name carries ".tmp", so a leftover is easy to find (bench/soak.py looks).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from harness.errors import InfraError, UserError


@contextlib.contextmanager
def atomic(path: Path, mode: int = 0o644, hint: str = "free disk space; files written before "
           "are intact") -> Iterator[IO[bytes]]:
    """A binary file that becomes `path` (permissions `mode`) when the block ends
    without an error; on an error it is removed, and an OSError becomes one
    InfraError line naming `path`."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)     # whatever the umask made of it
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InfraError(f"cannot write {path}: {e.strerror or e}", hint) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """`data` (text as UTF-8; a lone surrogate from a JSON escape is replaced,
    not fatal) into `path`, whole or not at all."""
    raw = data.encode("utf-8", errors="replace") if isinstance(data, str) else data
    with atomic(path, mode) as f:
        f.write(raw)


def write_json(path: Path, data: Any, indent: int = 2) -> None:
    write_atomic(path, json.dumps(data, indent=indent) + "\n")


def read_toml(path: Path, what: str, hint: str) -> dict[str, Any]:
    """A TOML file someone gave the harness (`what`: "matrix", "lab file"...):
    whatever is wrong with it is one UserError line naming it, with `hint`."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist", hint) from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not text (not UTF-8)", hint) from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}", hint) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML for a {what} ({e})", hint) from None
    except RecursionError:      # tomllib recurses once per level of '[[[[...'
        raise UserError(f"{path}: not a {what}: TOML nested too deeply", hint) from None
