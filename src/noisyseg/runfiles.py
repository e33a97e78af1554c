"""The files a run writes: checks before training, clear errors when a write fails, leftovers.

* :func:`check_output_file` / :func:`check_output_folder` — at the start of ``fit``: an output
  path that is a folder, lies under a file, cannot be written, or has less free space than the
  file needs fails in seconds, naming the path, instead of after the whole training.
* :func:`write_failed` — a failed write (disk full, quota, I/O error) as one ``OSError`` naming
  the file and the free space, from the exceptions torch and safetensors raise for it
  (``RuntimeError: [enforce fail at inline_container.cc:...] . unexpected pos``,
  ``SafetensorError: ... IoError``).
* :func:`atomic_write` — the one way noisyseg writes a file: into a temp file beside it, then
  ``os.replace`` onto the target, so a reader never sees half a file (:func:`write_json` for JSON).
* :func:`remove_stale_temp` — the temp files a killed atomic write leaves (up to a whole
  checkpoint) are removed at the next start.

The atomic writer names its temp file ``.<target name>.<8 random characters>.tmp``
in the target's own folder (``tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")``);
:data:`TEMP_NAME` matches exactly those names and nothing else.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
"""Name of an atomic writer's temp file; ``target`` is the name of the file it was to become
(``tempfile.mkstemp`` draws 8 characters from ``[a-z0-9_]``)."""


def temp_prefix(path: str | Path) -> str:
    """``prefix`` of the temp file of an atomic write onto ``path`` (see :data:`TEMP_NAME`)."""
    return f".{Path(path).name}."


def remove_stale_temp(folder: str | Path, targets: list[str] | None = None) -> list[Path]:
    """Delete the temp files that killed atomic writes left in ``folder`` (not its subfolders).

    Only call this where no other process writes at the same time (a run's own checkpoint folder,
    its own output files at the start of ``fit``).

    Args:
        folder: where the atomic writes went.
        targets: file names whose temp files to delete (``["enc.safetensors"]``); ``None``: every
            name matching :data:`TEMP_NAME`.

    Returns:
        The deleted files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in os.scandir(folder):
        m = TEMP_NAME.match(entry.name)
        if m is None or (targets is not None and m.group("target") not in targets):
            continue
        if entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except FileNotFoundError:
                pass
    return removed


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def free_space(folder: str | Path) -> int | None:
    """Free bytes on the filesystem holding ``folder`` (its nearest existing ancestor); ``None``
    when that cannot be asked."""
    try:
        return shutil.disk_usage(_existing_ancestor(Path(folder))).free
    except OSError:
        return None


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(folder: str | Path, what: str, need_bytes: int = 0, need_note: str = "") -> None:
    """Check that files can be written in ``folder`` (created later if missing) and that it has
    ``need_bytes`` free.

    A temp file is created and deleted in the folder, or in its nearest existing ancestor when it
    does not exist yet (so read-only mounts fail here, not only missing permissions).

    Args:
        folder: where the files will go.
        what: the output, for messages (``"checkpoint folder /runs/a/checkpoints"``).
        need_bytes: free bytes needed (0: not checked).
        need_note: how ``need_bytes`` was reckoned, for the message.

    Raises:
        ValueError: ``folder`` is a file or lies under one, cannot be written, or has less than
            ``need_bytes`` free (naming ``what``, the folder and both amounts).
    """
    base = _existing_ancestor(Path(folder))
    if not base.is_dir():
        raise ValueError(f"{what} cannot be written: {base} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=base, prefix=".noisyseg-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(f"{what} cannot be written: creating a file in {base} failed ({e.strerror or e})") from None
    free = free_space(base)
    if need_bytes and free is not None and free < need_bytes:
        raise ValueError(
            f"{what} cannot be written: {base} has {format_bytes(free)} free but it needs about "
            f"{format_bytes(need_bytes)}{f' ({need_note})' if need_note else ''}; free some space or write elsewhere"
        )


def check_output_file(path: str | Path, what: str, need_bytes: int = 0) -> None:
    """:func:`check_output_folder` for the folder of the file ``path``, and ``path`` not a folder.

    Args:
        path: the file a run will write.
        what: the setting that names it, for messages (``"encoder_out"``).
        need_bytes: free bytes needed in its folder.

    Raises:
        ValueError: ``path`` is an existing folder, or its folder fails :func:`check_output_folder`.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file path such as {path / 'encoder.safetensors'}")
    check_output_folder(path.parent, f"{what} {path}", need_bytes)


# torch.save reports a failed write of its zip container only as an enforce failure
_TORCH_WRITE_FAILURE = ("inline_container", "PytorchStreamWriter", "unexpected pos")


def write_failed(path: str | Path, err: BaseException) -> OSError | None:
    """One ``OSError`` naming ``path`` and the free space for a failed write, or ``None`` when
    ``err`` is not a write failure (a bug to let through unchanged).

    Write failures: any ``OSError`` (``ENOSPC``, ``EDQUOT``, ``EIO`` ...); torch's
    ``RuntimeError`` from its zip writer (``inline_container.cc ... unexpected pos``); a
    ``SafetensorError`` that reports an I/O error.
    """
    text = str(err)
    if isinstance(err, OSError):
        code = err.errno
        reason = err.strerror or text
    elif isinstance(err, RuntimeError) and any(k in text for k in _TORCH_WRITE_FAILURE):
        code, reason = None, f"torch's checkpoint writer stopped ({text.strip()})"
    elif type(err).__name__ == "SafetensorError" and ("Io" in text or "space" in text.lower()):
        code, reason = None, f"safetensors stopped ({text.strip()})"
    else:
        return None
    free = free_space(Path(path).parent)
    full = code in (errno.ENOSPC, errno.EDQUOT) or "StorageFull" in text or "No space left" in text
    hint = "the disk is full: free some space or write elsewhere" if full else "check the disk and the folder"
    room = f"{format_bytes(free)} free in {Path(path).parent}" if free is not None else "free space unknown"
    return OSError(code or errno.EIO, f"cannot write {path}: {reason}; {room}; the partial file was "
                                      f"removed and any earlier {Path(path).name} is unchanged ({hint})")


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path``; never a half-written file.

    The temp file is ``.<name>.<random>.tmp`` beside ``path`` (:data:`TEMP_NAME`); it is removed
    when the write fails, and a later run removes one that a kill left behind. Missing folders
    of ``path`` are created.

    Raises:
        OSError: the write failed (disk full, I/O error), naming ``path`` and the free space
            (:func:`write_failed`), whatever torch or safetensors raised for it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    os.close(fd)
    try:
        try:
            write(tmp)
            os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
        except Exception as e:
            failure = write_failed(path, e)
            if failure is None:
                raise
            Path(tmp).unlink(missing_ok=True)  # first, so that the free space reported is true
            raise failure from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path: str | Path, obj: Any, indent: int | None = 1, default: Callable[[Any], Any] | None = None) -> Path:
    """:func:`atomic_write` of ``json.dumps(obj, indent=indent, default=default)`` (UTF-8)."""
    text = json.dumps(obj, indent=indent, default=default)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
