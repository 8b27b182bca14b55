"""Files written whole or not at all. Every file featx writes goes through here: caches,
exports, results, models, the report, its figures, the weights-digest memo.

A file is written to a temporary file beside it (.NAME.tmp-PID), flushed and fsynced, then
renamed over the old one, and the folder is fsynced so the rename survives a crash. A kill
leaves the old file or the new one, never a truncated one. A full disk or a read-only folder
is one OutputError naming the path and saying what was kept.
"""
from __future__ import annotations

import errno
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def temporary(path: Path) -> Path:
    """Where `path`'s next version is written first (remove_stale_temporaries finds them)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def commit(tmp: Path, path: Path, reserve: bool = False) -> None:
    """fsync tmp (reserve: allocate its blocks first, so a full disk shows here rather than
    at a later write in place) and rename it over path; then fsync the folder."""
    with open(tmp, "r+b") as fh:
        if reserve and hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened (some network file systems): rename done
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error(path: Path, e: OSError, kept: str | None = None) -> OutputError:
    """One line for a write that failed: which file, why, and what is still there."""
    path = Path(path)
    kept = kept or (f"{path.name} is kept as it was" if path.exists() else f"{path.name} was not written")
    if e.errno in NO_SPACE:
        why = f"no space left on the device holding {path}"
    elif e.errno in READ_ONLY:
        why = f"cannot write {path}: {path.parent} is read-only or not writable ({e.strerror})"
    else:
        why = f"cannot write {path} ({e.strerror or e})"
    return OutputError(f"{why}; {kept}")


@contextmanager
def replacing(path, reserve: bool = False, kept: str | None = None):
    """Yields the temporary path to write `path`'s new version to; on leaving the block it
    is committed over `path`. Any OSError, and any error of the writer, removes it and leaves
    `path` as it was (an OSError as an OutputError)."""
    path = Path(path)
    tmp = temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        commit(tmp, path, reserve)
    except OSError as e:
        raise write_error(path, e, kept) from None
    finally:
        tmp.unlink(missing_ok=True)


def file_digest(path, algorithm: str = "sha256", block: int = 1 << 22) -> str:
    """The hex digest of a file's bytes (what sha256sum / md5sum print), read in blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_bytes(path, data: bytes) -> Path:
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def check_writable(folder, what: str, outcome: str = "nothing was computed") -> Path:
    """Refuse now, in one line, a folder that results cannot be written to (read-only, not a
    folder), before the work whose output would go there starts; `outcome` says what the
    refusal leaves (nothing computed, an old report kept)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next(p for p in (folder, *folder.parents) if p.exists())
        raise OutputError(f"{what}: {blocking} is a file, not a folder; {outcome}") from None
    except OSError as e:
        raise write_error(folder / ".", e, f"{outcome}; give another {what}") from None
    probe = temporary(folder / ".featx-write-probe")
    try:
        probe.write_bytes(b"")
    except OSError as e:
        raise OutputError(f"{what} {folder} is not writable ({e.strerror}); {outcome}: give "
                          f"another {what}") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:  # a read-only filesystem refuses even to remove what is not there
            pass
    return folder
