"""Walking a folder for documents, where every entry that cannot be used is reported, not fatal.

Symbolic links are followed: a link to a file is that file, a link to a folder is walked once
(folders are remembered by device and inode, so a loop ends the descent). The same file reached
by two paths is one document (its resolved path is its identity; the pipeline keeps the first
path it meets, in sorted order). Entries whose names start with `.` are never documents.

What cannot be used goes in `problems`, one per entry, and the walk goes on:
- a link that loops or whose target is missing, and a folder that cannot be listed, fail
  (they look like documents or hold some, and the user should hear of them);
- FIFOs, sockets and devices are skipped: they are not documents, and opening a FIFO would
  block the ingest until something writes to it.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class WalkProblem:
    path: Path
    message: str
    failed: bool
    """True: reported in `failed` (an error); False: in `skipped` (a reason)."""
    code: str = ""
    """The failed entry's `error_code`: symlink_loop, broken_link or unreadable."""
    unreadable_folder: bool = False
    """A folder whose content is unknown: documents ingested from it before are kept."""


@dataclass
class WalkResult:
    files: list[Path] = field(default_factory=list)
    problems: list[WalkProblem] = field(default_factory=list)


def walk(root: Path) -> WalkResult:
    """Regular files under `root` (not resolved), and a problem for each unusable entry.

    Raises OSError if `root` itself cannot be listed.
    """
    result = WalkResult()
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            info = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            if folder == root:
                raise
            result.problems.append(
                WalkProblem(
                    folder,
                    f"cannot read folder: {_reason(e)}",
                    failed=True,
                    code="unreadable",
                    unreadable_folder=True,
                )
            )
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        for entry in entries:
            if entry.name.startswith("."):
                continue  # .git, .DS_Store, editor swap files: never documents
            path = Path(entry.path)
            kind = classify(path)
            if kind == "folder":
                stack.append(path)
            elif kind == "file":
                result.files.append(path)
            elif isinstance(kind, WalkProblem):
                result.problems.append(kind)
    return result


def classify(path: Path) -> str | WalkProblem:
    """ "file", "folder", or the problem that keeps `path` from being read as a document."""
    try:
        mode = os.stat(path).st_mode  # follows links
    except OSError as e:
        code, message = _link_problem(path, e)
        return WalkProblem(path, message, failed=True, code=code)
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISREG(mode):
        return "file"
    return WalkProblem(path, f"not a regular file ({_special_kind(mode)})", failed=False)


def _link_problem(path: Path, error: OSError) -> tuple[str, str]:
    """(error_code, message) for an entry that cannot even be looked at."""
    if path.is_symlink():
        if error.errno == errno.ELOOP:
            return "symlink_loop", "symbolic link loop"
        if error.errno == errno.ENOENT:
            return "broken_link", f"broken symbolic link: {os.readlink(path)} does not exist"
    return "unreadable", f"cannot read: {_reason(error)}"


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "named pipe"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _reason(error: OSError) -> str:
    return error.strerror or str(error)
