"""A job writes into a staging folder beside its output; only a result whose rows all add up is
published, with ``_SUCCESS`` in it (the marker Spark and Hadoop tools wait for).

Outputs live on local (or mounted) filesystems only (``plan.output_location`` refuses object
stores). An existing output is replaced by exchanging the two folders in one
``renameat2(RENAME_EXCHANGE)`` call: a reader, or a run killed at any moment, sees the previous
output or the new one, never a mix and never none. Where the filesystem cannot exchange, the old
output is renamed to ``<staging>.old`` and the new one renamed in; a run killed between the two
leaves no output but the ``.old`` one, which the next run puts back before anything else.
"""

from __future__ import annotations

import ctypes
import errno
import os
import uuid

import pyarrow.fs as pafs

from serving.offline.faults import checkpoint
from serving.offline.manifest import SUCCESS_NAME

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def staging_prefix(out_path: str) -> str:
    parent, _, name = out_path.rstrip("/").rpartition("/")
    return f"{parent}/.{name}.staging-"


def new_staging(fs: pafs.FileSystem, out_path: str) -> str:
    """A fresh hidden folder next to the output (same filesystem, so publishing is a rename)."""
    staging = f"{staging_prefix(out_path)}{uuid.uuid4().hex[:8]}"
    fs.create_dir(staging, recursive=True)
    return staging


def remove_stale_staging(fs: pafs.FileSystem, out_path: str) -> list[str]:
    """Clean up after runs that were killed (call while holding the output's lock): a previous
    output set aside (``.old``) is put back if no output took its place, else deleted; staging
    folders are deleted. Returns what was deleted."""
    prefix = staging_prefix(out_path)
    parent = prefix.rpartition("/")[0]
    found = [
        i.path
        for i in fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
        if i.type == pafs.FileType.Directory and i.path.startswith(prefix)
    ]
    for old in (p for p in found if p.endswith(".old")):
        if fs.get_file_info(out_path).type == pafs.FileType.NotFound:
            fs.move(old, out_path)  # killed between setting the output aside and moving the new one in
            found.remove(old)
    for path in found:
        fs.delete_dir(path)
    return found


def carry_over(fs: pafs.FileSystem, out_path: str, staging: str, rel_paths: list[str]) -> None:
    """Put files of the published output into the staging folder unchanged: hard links on a
    local filesystem (no bytes copied), copies elsewhere."""
    for rel in rel_paths:
        src, dst = f"{out_path}/{rel}", f"{staging}/{rel}"
        fs.create_dir(os.path.dirname(dst), recursive=True)
        if isinstance(fs, pafs.LocalFileSystem):
            os.link(src, dst)
        else:
            fs.copy_file(src, dst)


def set_aside(fs: pafs.FileSystem, staging: str, out_path: str) -> str:
    """Move a rejected result to ``<output>.rejected`` (replacing an older one); returns its path."""
    rejected = f"{out_path.rstrip('/')}.rejected"
    if fs.get_file_info(rejected).type != pafs.FileType.NotFound:
        fs.delete_dir(rejected)
    fs.move(staging, rejected)
    return rejected


def publish(fs: pafs.FileSystem, staging: str, out_path: str) -> None:
    """Mark the result complete and put it in place of the output (see the module's docstring)."""
    with fs.open_output_stream(f"{staging}/{SUCCESS_NAME}"):
        pass
    checkpoint("staged")
    exists = fs.get_file_info(out_path).type != pafs.FileType.NotFound
    if not exists:
        fs.move(staging, out_path)
        return
    if isinstance(fs, pafs.LocalFileSystem) and _exchange(staging, out_path):
        checkpoint("exchanged")
        fs.delete_dir(staging)  # now the previous output
        return
    old = f"{staging}.old"
    fs.move(out_path, old)
    fs.move(staging, out_path)
    fs.delete_dir(old)


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically; False where the kernel or filesystem cannot."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"exchanging {a} and {b}: {os.strerror(err)}")
