"""Finding the images under SRC and planning where each one goes under DST, safely.

The rules this module enforces (each one is a promise of ``allcores images``):

- **Sources are never modified**: an output that would land on or inside SRC (possible when
  SRC lies inside DST) is refused for that image.
- **Nothing is written outside DST**: output folders are created one level at a time, and a
  symbolic link met on the way is followed only when it leads back inside DST.
- **DST inside SRC** is skipped while walking SRC, so a run never eats its own outputs.
- Symbolic links to folders inside SRC are not walked (they can loop); links to files inside
  SRC are read. A link whose target lies **outside SRC** (``outside.png -> /etc/hostname``) is
  refused and listed, unless the caller allows it (``follow_links=True``): a folder from
  someone else must not make the run read, and copy into DST, files it was never given.
- Temporary files are swept only when the process named in them is gone: two runs into one
  DST must not delete each other's work in progress.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from allcores.images._steps import EXTENSION_FORMATS, OUTPUT_FORMATS, TEMP_SUFFIX


@dataclass(frozen=True)
class Found:
    """One candidate under SRC. ``problem`` is set when it cannot even be opened as a file."""

    rel: str  # path relative to SRC, with "/" separators (the name in reports and datasets)
    path: str  # absolute path to read
    problem: str = ""


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


#: The reason given for a link out of SRC that was not followed (see the module docstring).
OUTSIDE_LINK = (
    "a symbolic link leading outside SRC: not read (pass follow_links=True, or "
    "--follow-links, to read such links)"
)


def discover(src: str, exclude: list[str], follow_links: bool = False) -> list[Found]:
    """Every file under ``src`` whose name ends in an image extension, sorted by path.

    ``exclude`` lists folders (DST, the samples folder's outputs...) that are not walked.
    ``src`` must be resolved (realpath). Links to files outside it are listed with the
    problem :data:`OUTSIDE_LINK` unless ``follow_links``.
    """
    excluded: list[os.stat_result] = []
    for path in exclude:
        try:
            excluded.append(os.stat(path))
        except OSError:
            pass
    found: list[Found] = []
    stack = [("", src)]
    while stack:
        rel_dir, folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            found.append(Found(rel_dir or ".", folder, f"unreadable folder: {exc.strerror}"))
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    if not any(_same_file(st, ex) for ex in excluded):
                        stack.append((rel, entry.path))
                    continue
            except OSError:
                continue
            if os.path.splitext(entry.name)[1].lower() not in EXTENSION_FORMATS:
                continue
            if entry.name.endswith(TEMP_SUFFIX) or entry.name.startswith("."):
                continue  # our own temporary files and hidden files (e.g. macOS ._x.jpg)
            try:
                st = entry.stat()  # follows a link to the file it names
            except FileNotFoundError:
                found.append(Found(rel, entry.path, "unreadable: broken symbolic link"))
                continue
            except OSError as exc:
                found.append(Found(rel, entry.path, f"unreadable: {exc.strerror}"))
                continue
            if stat.S_ISDIR(st.st_mode):
                continue  # a link to a folder: not walked
            if not stat.S_ISREG(st.st_mode):
                # a FIFO named x.jpg would block the worker that opens it forever
                found.append(Found(rel, entry.path, "not a regular file"))
                continue
            path = os.path.abspath(entry.path)
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not follow_links and not is_inside(target, src):
                    found.append(Found(rel, entry.path, OUTSIDE_LINK))
                    continue
                path = target  # read what was checked, even if the link changes later
            found.append(Found(rel, path))
    found.sort(key=lambda f: f.rel)
    return found


def output_rel(rel: str, fmt: str | None) -> str:
    """Where ``rel`` goes under DST: the same path, with the new extension when converting."""
    if fmt is None:
        return rel
    stem, ext = os.path.splitext(rel)
    wanted = OUTPUT_FORMATS[fmt.lower()][1]
    # keep .jpeg as .jpeg when writing JPEG: the same format needs no new name
    if EXTENSION_FORMATS.get(ext.lower()) == OUTPUT_FORMATS[fmt.lower()][0]:
        return rel
    return stem + wanted


def is_inside(path: str, folder: str) -> bool:
    """Both paths already resolved (realpath)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class DirMaker:
    """Creates output folders under DST without ever following a link out of it."""

    def __init__(self, dst_real: str, src_real: str):
        self.dst_real = dst_real
        self.src_real = src_real
        self._ok: dict[str, str] = {"": ""}  # rel folder -> "" (fine) or the reason it is not

    def ensure(self, rel_dir: str) -> str:
        """Make DST/rel_dir; returns "" when it is safe to write there, else the reason."""
        if rel_dir in self._ok:
            return self._ok[rel_dir]
        parent = rel_dir.rpartition("/")[0]
        reason = self.ensure(parent)
        if not reason:
            path = os.path.join(self.dst_real, *rel_dir.split("/"))
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                try:
                    os.mkdir(path)
                except FileExistsError:
                    pass
                except OSError as exc:
                    reason = f"cannot create output folder {rel_dir}: {exc.strerror}"
            else:
                if stat.S_ISLNK(st.st_mode):
                    target = os.path.realpath(path)
                    if not is_inside(target, self.dst_real):
                        reason = f"output folder {rel_dir} is a link leading outside DST"
                    elif is_inside(target, self.src_real) and not is_inside(
                        self.dst_real, self.src_real
                    ):
                        reason = f"output folder {rel_dir} is a link into SRC"
                elif not stat.S_ISDIR(st.st_mode):
                    reason = f"output folder {rel_dir} exists and is not a folder"
        self._ok[rel_dir] = reason
        return reason

    def folders(self) -> list[str]:
        """The absolute output folders created or checked so far (for the temp-file sweep)."""
        return [
            os.path.join(self.dst_real, *rel.split("/")) if rel else self.dst_real
            for rel, reason in self._ok.items()
            if not reason
        ]


def _writer_pid(name: str) -> int | None:
    """The pid in a temporary file's name (``.NAME.<pid>.allcores-tmp``), or None."""
    head = name[: -len(TEMP_SUFFIX)]
    pid = head.rpartition(".")[2]
    return int(pid) if pid.isdigit() else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    try:  # a killed worker nobody has reaped yet is a zombie: its file is a leftover
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def sweep_temps(folders: list[str]) -> int:
    """Delete temporary files that killed runs left in ``folders``; returns how many.

    Only files whose writer (the pid in the name) is gone: a live process's file is another
    run's image in progress. A worker pid reused by a new process keeps its old file until a
    later run, which is harmless (the name is hidden and unique to that pid).
    """
    removed = 0
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if not (entry.name.endswith(TEMP_SUFFIX) and entry.name.startswith(".")):
                continue
            pid = _writer_pid(entry.name)
            if pid is not None and _pid_alive(pid):
                continue
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed
