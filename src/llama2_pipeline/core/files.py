"""Small I/O helpers shared by every library module: atomic writes and content digests.

A crashed run must never leave a half-written output that looks complete, so every writer
goes through :func:`atomic_path` (a temporary sibling that is renamed into place on success).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    On an exception the temporary file or folder is removed and ``target`` is left untouched.
    For folders, an existing ``target`` is replaced as a whole.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        # mkstemp/mkdtemp (and writers such as safetensors) create owner-only entries: give the
        # output, and everything in a staged folder, the permissions the user's umask gives
        if tmp.exists():
            _honour_umask(tmp, _umask())
        if is_dir:
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _honour_umask(path: Path, umask: int) -> None:
    """``path`` (and what a folder holds) with the modes a plain ``open``/``mkdir`` gives: rw (rwx for
    folders and executables) for everyone the umask allows."""
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in entries:
        if p.is_symlink():
            continue
        executable = p.is_dir() or os.stat(p).st_mode & 0o100
        os.chmod(p, (0o777 if executable else 0o666) & ~umask)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(target: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty, key-sorted JSON, atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_jsonl(target: str | os.PathLike, records: Iterable[dict], sort_keys: bool = False) -> None:
    """Write ``records`` as JSON lines (UTF-8, one object per line), atomically."""
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=sort_keys) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of one file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, or of a folder (relative names and file digests, sorted).

    Hidden temporaries (``.name.tmp-*``) and ``__pycache__`` are ignored so that a digest
    only depends on committed content.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"cannot digest {path}: no such file or folder")
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if not p.is_file() or "__pycache__" in rel.parts or any(
            part.startswith(".") and ".tmp-" in part for part in rel.parts
        ):
            continue
        h.update(rel.as_posix().encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def parse_json_line(line: str, where: str) -> Any:
    """One JSON-lines value; a bad line raises ValueError naming ``where`` (file and line), the
    column, and a line that ends before its value does (a truncated file) as such."""
    text = line.rstrip("\r\n")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg.startswith("Unterminated string") or e.pos >= len(text.rstrip()):
            detail = f"the line ends before its JSON value does (a truncated line? {e.msg}, column {e.colno})"
        else:
            detail = f"{e.msg} at column {e.colno}"
        raise ValueError(f"{where}: not valid JSON: {detail}") from None


def read_jsonl(path: str | os.PathLike, unit: str = "line") -> tuple[list[Any], list[int]]:
    """The records of a JSON-lines file and their line numbers (blank lines skipped); a bad line
    raises ValueError naming the file and the line (called ``unit`` in the message)."""
    records, rows = [], []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            records.append(parse_json_line(line, f"{path}, {unit} {i}"))
            rows.append(i)
    return records, rows
