"""The ``dataset=`` array: one uint8 ``N x H x W x C`` array filled in place by the workers.

How the pixels travel (none of them through the parent)::

    parent: create  FILE.tmp.npy  (numpy header + N*H*W*C zero bytes, sparse on disk)
    worker: encode the output -> decode it -> os.pwrite(row bytes, offset of row i)
    parent: all rows in -> drop the rows of failed images (only if any) -> rename to FILE.npy
            (or, for FILE.npz, stream the array and the labels into the zip, then delete)

Rows are decoded from the encoded output, so the array holds exactly the pixels of the files
in DST, whether an image was just made or skipped by a resumed run. Metadata:

- ``names``: each image's path relative to SRC, in row order (sorted paths);
- ``classes``: the sorted first-level folder names under SRC (images directly in SRC have the
  class ``""``); ``labels[i]`` is the index of row i's class in ``classes``.

A ``.npz`` holds ``images``, ``names``, ``labels`` and ``classes``. A ``.npy`` holds only the
array; the rest goes beside it in ``FILE.json`` (``{"names", "labels", "classes", "shape"}``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from allcores.images._steps import DatasetTarget

#: Rows copied per step when failed rows are dropped or a .npz is assembled (bounds memory).
COPY_ROWS = 256


@dataclass(frozen=True)
class DatasetPlan:
    final: str  # where the user asked for it
    tmp: str
    target: DatasetTarget
    count: int
    names: list[str]


def label_of(rel: str) -> str:
    """The class of an image: its first-level folder under SRC ("" for files in SRC itself)."""
    head, sep, _ = rel.partition("/")
    return head if sep else ""


#: Flags for every file this module creates: a new file only (``O_EXCL``), never through a
#: symbolic link (``O_NOFOLLOW``), so a link planted at a temporary name cannot redirect the
#: write to an unrelated file.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def create_new(path: str, mode: int = 0o644) -> int:
    """Create ``path`` as a new file and return a write fd; a leftover at that name (a file or
    a link from a killed run with the same pid) is removed first, never followed."""
    try:
        return os.open(path, _NEW_FILE, mode)
    except FileExistsError:
        os.unlink(path)  # unlink removes a link itself, not its target
        return os.open(path, _NEW_FILE, mode)


def _new_npy(path: str, shape: tuple[int, ...]) -> int:
    """Lay out a new uint8 ``.npy`` file of ``shape`` (header, then zero bytes, sparse);
    returns the offset of its data. What ``open_memmap(mode="w+")`` does, without following
    a link at ``path``."""
    import numpy as np

    fd = create_new(path)
    with os.fdopen(fd, "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                  "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        offset = f.tell()
        nbytes = 1
        for n in shape:
            nbytes *= n
        f.truncate(offset + nbytes)
    return offset


def _sweep_stale(folder: str, name: str) -> None:
    """Delete temporary arrays of killed runs (their pid is gone): they can be gigabytes."""
    prefix = f".{name}."
    for entry in os.scandir(folder):
        if not (entry.name.startswith(prefix) and ".tmp.npy" in entry.name):
            continue
        try:
            pid = int(entry.name[len(prefix):].split(".", 1)[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            os.unlink(entry.path)
        except (ValueError, OSError):
            pass  # not ours, or a live run's


def create(final: str, names: list[str], size: tuple[int, int], mode: str) -> DatasetPlan:
    """Lay out the temporary array file the workers will fill."""
    width, height = size
    shape = (len(names), height, width, len(mode))
    folder = os.path.dirname(os.path.abspath(final))
    os.makedirs(folder, exist_ok=True)
    _sweep_stale(folder, os.path.basename(final))
    tmp = os.path.join(folder, f".{os.path.basename(final)}.{os.getpid()}.tmp.npy")
    # workers write through their own file handles; nothing stays mapped here
    offset = _new_npy(tmp, shape)
    return DatasetPlan(
        final=final,
        tmp=tmp,
        target=DatasetTarget(tmp, offset, width, height, mode),
        count=len(names),
        names=list(names),
    )


def finish(plan: DatasetPlan, failed_rows: set[int]) -> tuple[int, ...]:
    """Drop failed rows, move the array into place; returns its final shape."""
    import numpy as np

    keep = [i for i in range(plan.count) if i not in failed_rows]
    names = [plan.names[i] for i in keep]
    # classes of the rows that made it (a folder of only broken files is no class)
    classes = sorted({label_of(n) for n in names})
    index = {c: i for i, c in enumerate(classes)}
    labels = [index[label_of(n)] for n in names]
    source = np.load(plan.tmp, mmap_mode="r")
    if len(keep) != plan.count:
        compact = plan.tmp + ".compact.npy"
        _new_npy(compact, (len(keep), *source.shape[1:]))
        out = np.load(compact, mmap_mode="r+")
        for start in range(0, len(keep), COPY_ROWS):
            rows = keep[start : start + COPY_ROWS]
            out[start : start + len(rows)] = source[rows]
        out.flush()
        del out, source
        os.replace(compact, plan.tmp)
        source = np.load(plan.tmp, mmap_mode="r")
    shape = tuple(int(n) for n in source.shape)
    meta: dict[str, Any] = {"names": names, "labels": labels, "classes": classes,
                            "shape": list(shape)}
    if plan.final.endswith(".npz"):
        tmp_zip = plan.tmp + ".npz"
        # np.savez streams a memory-mapped array into the zip in chunks: bounded memory.
        with os.fdopen(create_new(tmp_zip), "wb") as zf:
            np.savez(
                zf,
                images=source,
                names=np.array(names, dtype=str),
                labels=np.array(labels, dtype=np.int64),
                classes=np.array(classes, dtype=str),
            )
        del source
        os.replace(tmp_zip, plan.final)
        os.unlink(plan.tmp)
    else:
        del source
        meta_path = os.path.splitext(plan.final)[0] + ".json"
        with os.fdopen(create_new(meta_path + ".tmp"), "w", encoding="utf-8") as f:
            json.dump(meta, f)
        os.replace(meta_path + ".tmp", meta_path)
        os.replace(plan.tmp, plan.final)
    return shape


def discard(plan: DatasetPlan) -> None:
    """Remove the temporary file of an interrupted run."""
    for path in (plan.tmp, plan.tmp + ".compact.npy", plan.tmp + ".npz"):
        try:
            os.unlink(path)
        except OSError:
            pass
