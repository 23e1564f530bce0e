"""One run of the image tool: plan in the parent, images on every core, report at the end.

::

    parent                                   workers (allcores.imap, unordered)
    ------                                   -------
    discover SRC (sorted) -> plan outputs,
    create folders (never through a link
    out of DST), sweep stale temp files,
    lay out the dataset file         ---->   process_one(job, item) per image:
                                               skip if complete | open, check, orient, convert,
                                               resize, encode, temp file + rename,
                                               pwrite the dataset row
    progress bar, count outcomes     <----   Outcome(index, status, reason)  (a few bytes)
    failures file, dataset rename, manifest, Summary

Only small :class:`Outcome` records come back; pixels go from the worker straight to disk.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from allcores.images import _dataset, _discover
from allcores.images._steps import (
    DEFAULT_MAX_PIXELS,
    OUTPUT_FORMATS,
    OUTPUT_MODES,
    RESIZE_MODES,
    Item,
    Job,
    Outcome,
    Steps,
    parse_size,
    process_one,
)
from allcores.images._summary import ImageFailure, Summary

#: Written in DST: the failures of the last run, as JSON (removed when a run has none).
FAILURES_FILE = "allcores-failures.json"
#: Written in DST: the steps the outputs were made with. Resume trusts existing outputs only
#: when these match, so changing --size (say) redoes every image instead of mixing sizes.
MANIFEST_FILE = ".allcores-images.json"
#: Scratch folder (inside DST, removed afterwards) for the one-core comparison run.
SERIAL_SCRATCH = ".allcores-serial"
#: Progress-bar refreshes per second at most (tqdm's own rate limit).
PROGRESS_MININTERVAL = 0.2


def _check_options(
    size: Any,
    resize: str,
    mode: str | None,
    format: str | None,
    quality: int,
    workers: Any,
    max_pixels: int,
) -> Steps:
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize={resize!r}: choose one of {', '.join(RESIZE_MODES)}")
    if mode is not None:
        mode = mode.upper()
        if mode == "KEEP":
            mode = None
        elif mode not in OUTPUT_MODES:
            raise ValueError(f"mode={mode!r}: choose one of {', '.join(OUTPUT_MODES)} or keep")
    fmt = None
    if format is not None and format.lower() != "keep":
        if format.lower() not in OUTPUT_FORMATS:
            raise ValueError(
                f"format={format!r}: choose one of {', '.join(OUTPUT_FORMATS)} or keep"
            )
        fmt = OUTPUT_FORMATS[format.lower()][0]
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality={quality!r} must be between 1 and 100")
    if workers is not None and int(workers) < 1:
        raise ValueError(f"workers={workers!r} must be at least 1")
    if int(max_pixels) < 1:
        raise ValueError(f"max_pixels={max_pixels!r} must be at least 1")
    return Steps(
        size=parse_size(size) if size is not None else None,
        resize=resize,
        mode=mode,
        format=fmt,
        quality=int(quality),
        max_pixels=int(max_pixels),
    )


def _run_items(
    fn: Callable[[Item], Outcome], items: list[Item], workers: int
) -> Iterator[Outcome | BaseException]:
    """Every item on ``workers`` processes, outcomes as they arrive.

    ``on_error="collect"``: process_one never raises for a bad image, so an exception here
    means the worker died (a segfault in a decoder, the OOM killer); it stands in the stream
    and the caller marks the items that never answered.
    """
    from allcores.images._parallel import imap_unordered

    yield from imap_unordered(fn, items, workers)


class _Progress:
    """A tqdm bar on stderr when tqdm is installed, else one plain line rewritten in place."""

    def __init__(self, total: int, enabled: bool):
        self.total = total
        self.enabled = enabled and total > 0
        self.bar: Any = None
        self.count = 0
        self.last = 0.0
        if not self.enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, unit="img", mininterval=PROGRESS_MININTERVAL,
                        file=sys.stderr, dynamic_ncols=True)

    def update(self, done: int, skipped: int, failed: int) -> None:
        if not self.enabled:
            return
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
            now = time.monotonic()
            if now - self.last >= PROGRESS_MININTERVAL or self.count == self.total:
                self.bar.set_postfix(done=done, skipped=skipped, failed=failed, refresh=False)
                self.last = now
            return
        now = time.monotonic()
        if now - self.last >= PROGRESS_MININTERVAL or self.count == self.total:
            sys.stderr.write(
                f"\r  {self.count}/{self.total} images: {done} done, {skipped} skipped, "
                f"{failed} failed"
            )
            sys.stderr.flush()
            self.last = now

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            sys.stderr.write("\n")


def _load_manifest(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _write_json(path: str, data: Any) -> None:
    """Write ``path`` whole or not at all, through a temp file created as a new file only."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with os.fdopen(_dataset.create_new(tmp), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)  # replaces a link at ``path`` itself, never its target


class _Plan:
    """The parent's view of a run: items to send and failures known before any work."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.rels: list[str] = []  # SRC-relative name of items[i]
        self.failures: list[ImageFailure] = []
        self.folders: list[str] = []


def _plan(
    found: list[_discover.Found], src_real: str, dst_real: str, steps: Steps, with_rows: bool
) -> _Plan:
    plan = _Plan()
    maker = _discover.DirMaker(dst_real, src_real)
    dst_in_src = _discover.is_inside(dst_real, src_real)
    taken: dict[str, str] = {}
    for f in found:
        if f.problem:
            plan.failures.append(ImageFailure(f.rel, f.problem, "OSError"))
            continue
        out_rel = _discover.output_rel(f.rel, steps.format and steps.format.lower())
        if out_rel in taken:
            plan.failures.append(ImageFailure(
                f.rel, f"same output name as {taken[out_rel]} ({out_rel}); rename one", "",
            ))
            continue
        taken[out_rel] = f.rel
        folder_rel = out_rel.rpartition("/")[0]
        reason = maker.ensure(folder_rel)
        out = os.path.join(dst_real, *out_rel.split("/"))
        # SRC inside DST (the --sample layout): an output must not land in SRC. DST inside
        # SRC is the other way round: every output is inside SRC, and discovery skips DST.
        if not reason and not dst_in_src and _discover.is_inside(os.path.realpath(out), src_real):
            reason = "its output would overwrite a file inside SRC"
        if reason:
            plan.failures.append(ImageFailure(f.rel, reason, ""))
            continue
        row = len(plan.items) if with_rows else -1
        plan.items.append(Item(len(plan.items), f.path, out, row))
        plan.rels.append(f.rel)
    plan.folders = maker.folders()
    return plan


_DONE, _SKIPPED, _FAILED = 1, 2, 3  # per-image status codes (0: no answer yet)
_CODES = {"done": _DONE, "skipped": _SKIPPED, "failed": _FAILED}


class _Ran:
    """What a run did: one status byte per image (a million images cost 1 MB), the failures."""

    def __init__(self, count: int):
        self.status = bytearray(count)
        self.failures: list[ImageFailure] = []
        self.seconds = 0.0

    def count(self, code: int) -> int:
        return self.status.count(code)

    def indexes(self, code: int) -> list[int]:
        return [i for i, c in enumerate(self.status) if c == code]


def _execute(
    job: Job,
    plan: _Plan,
    workers: int,
    progress: bool,
    serial: bool = False,
    per_image: Callable[[Job, Item], Outcome] = process_one,
) -> _Ran:
    """Run the plan on ``workers`` processes (or in this one, ``serial=True``).

    ``per_image`` is a seam for the tests (a function that kills its worker on one image).
    """
    fn = functools.partial(per_image, job)
    ran = _Ran(len(plan.items))
    crashes: list[BaseException] = []
    counts = {"done": 0, "skipped": 0, "failed": 0}
    bar = _Progress(len(plan.items), progress)
    start = time.perf_counter()
    stream: Iterable[Outcome | BaseException] = (
        map(fn, plan.items) if serial else _run_items(fn, plan.items, workers)
    )
    try:
        for result in stream:
            if isinstance(result, BaseException):
                crashes.append(result)
                counts["failed"] += 1
            else:
                ran.status[result.index] = _CODES[result.status]
                counts[result.status] += 1
                if result.status == "failed":
                    ran.failures.append(
                        ImageFailure(plan.rels[result.index], result.reason, result.error)
                    )
            bar.update(counts["done"], counts["skipped"], counts["failed"])
    except KeyboardInterrupt:
        # Ctrl-C may land here rather than inside the engine's iterator; hand it in, so the
        # engine stops the running tasks (and their workers) before the sweep below.
        throw = getattr(stream, "throw", None)
        if throw is not None:
            try:
                throw(KeyboardInterrupt)
            except (KeyboardInterrupt, StopIteration):
                pass
        raise
    finally:
        bar.close()
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # an interrupted imap stops feeding work to the pool
        _discover.sweep_temps(plan.folders)
    ran.seconds = time.perf_counter() - start
    missing = ran.indexes(0)
    if missing:
        # only a dead worker leaves an item unanswered; its error names the cause
        cause = "; ".join(sorted({_crash_cause(c) for c in crashes})) or "no answer"
        for i in missing:
            ran.failures.append(ImageFailure(
                plan.rels[i], f"the worker process died on it ({cause})", "WorkerCrashedError",
            ))
            ran.status[i] = _FAILED
    return ran


def _crash_cause(exc: BaseException) -> str:
    """The short cause of a worker's death (WorkerCrashedError.cause), else the message."""
    cause = getattr(exc, "cause", None)
    if cause:
        return str(cause).split(" (")[0]
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _serial_comparison(
    plan: _Plan, steps: Steps, dst_real: str, src_real: str, dataset_size: Any, dataset_mode: str
) -> float:
    """Time the same images on one core, in this process, into a scratch folder."""
    scratch = os.path.join(dst_real, SERIAL_SCRATCH)
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    try:
        found = [
            _discover.Found(rel, item.src) for rel, item in zip(plan.rels, plan.items, strict=True)
        ]
        scratch_plan = _plan(found, src_real, scratch, steps, dataset_size is not None)
        target = None
        if dataset_size is not None:
            ds = _dataset.create(os.path.join(scratch, "dataset.npy"), scratch_plan.rels,
                                 dataset_size, dataset_mode)
            target = ds.target
        # the same per-image work the workers did, timed the same way (the loop only)
        return _execute(Job(steps, target, force=True), scratch_plan, 1, False,
                        serial=True).seconds
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _vouch(manifest_path: str, settings: dict[str, Any]) -> tuple[bool, int]:
    """Read and rewrite the manifest; return (every output trusted, trust those since ns).

    The manifest says which steps made the outputs in DST. ``resume: true``: every output
    was made with its settings. ``resume: false``: a run with these settings started at
    ``since`` (ns, the file system's clock) and had not finished: outputs written since
    then are its work and are trusted, older ones are redone. No manifest (a new DST, or a
    deleted one), or other settings, vouch for nothing: every existing output is redone
    rather than trusted, and the manifest records this run's start.
    """
    manifest = _load_manifest(manifest_path)
    if manifest is not None and manifest.get("settings") == settings:
        if manifest.get("resume") is True:
            return True, 0
        since = manifest.get("since")
        if isinstance(since, int) and since > 0:
            _write_json(manifest_path, {"settings": settings, "resume": False, "since": since})
            return False, since
    # This run starts now: the manifest's own mtime, written before any output, is on the
    # same (coarse) clock as the outputs' mtimes, so every output this run writes is >= it.
    _write_json(manifest_path, {"settings": settings, "resume": False})
    since = os.stat(manifest_path).st_mtime_ns
    _write_json(manifest_path, {"settings": settings, "resume": False, "since": since})
    return False, since


def _dataset_path(dataset: str, dst_real: str, src_real: str) -> str:
    """Where the dataset goes: inside DST (relative to it, or absolute), else ValueError.

    Its folders are made like output folders (no link followed out of DST), so the array, its
    temporary file and its ``.json`` all land inside DST, as the docs promise.
    """
    final = os.path.normpath(os.path.join(dst_real, dataset))  # an absolute path stays as is
    if not _discover.is_inside(final, dst_real) or final == dst_real:
        raise ValueError(
            f"dataset {dataset!r} is outside DST ({dst_real}): allcores images writes only "
            "inside DST. Give a name relative to DST (e.g. train.npz) and move the file "
            "afterwards if it must live elsewhere."
        )
    folder_rel = os.path.relpath(os.path.dirname(final), dst_real)
    folder_rel = "" if folder_rel == "." else folder_rel.replace(os.sep, "/")
    reason = _discover.DirMaker(dst_real, src_real).ensure(folder_rel)
    if reason:
        raise ValueError(f"cannot write the dataset {dataset!r}: {reason}")
    if os.path.isdir(final):
        raise ValueError(f"dataset {dataset!r} is a folder in DST: give a file name")
    return final


def process(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    size: int | str | tuple[int, int] | None = None,
    resize: str = "fit",
    mode: str | None = None,
    format: str | None = None,
    quality: int = 85,
    dataset: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    compare_serial: bool = False,
    force: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    follow_links: bool = False,
) -> Summary:
    """Prepare every image under ``src`` into ``dst``, on every core; returns a :class:`Summary`.

    Args:
        src: folder searched recursively for .jpg .jpeg .png .webp .tif .tiff .bmp .gif files.
        dst: output folder; SRC's tree is mirrored under it. It may lie inside ``src``.
        size: ``256`` or ``"320x240"``: the box images are resized to; ``None`` keeps sizes.
        resize: ``"fit"`` inside the box (aspect kept, never enlarged), ``"fill"`` the box and
            centre-crop, or ``"exact"`` (stretched).
        mode: ``"RGB"``, ``"L"`` or ``"RGBA"``; ``None`` keeps each image's mode.
        format: ``"jpeg"``, ``"png"``, ``"webp"``, ``"tiff"``, ``"bmp"``, ``"gif"``; ``None``
            keeps each image's format (and file name).
        quality: JPEG and WebP quality (1-100).
        dataset: also write one uint8 ``N x H x W x C`` array (``.npy`` or ``.npz``; a relative
            path is placed in ``dst``; a path outside ``dst`` is refused, since nothing is
            written outside DST). Needs ``size``; rows are ``mode`` (RGB by default).
        workers: processes to use (default: every core).
        compare_serial: also time the same images on one core and report the speedup.
        force: redo every image, even those with a complete output.
        max_pixels: refuse larger images as decompression bombs.
        progress: show a progress bar on stderr.
        follow_links: also read symbolic links under ``src`` whose target lies outside it;
            by default they are listed as failures and not read.

    Images already done (output newer than the source, made with the same steps) are skipped;
    bad images are listed in ``summary.failures`` and in ``dst/allcores-failures.json``
    rather than raised. Raises ``ValueError`` for bad options, ``FileNotFoundError`` when
    ``src`` is missing and ``NotADirectoryError`` when it is a file.

    >>> import allcores.images
    >>> summary = allcores.images.process("photos", "thumbs", size=256)  # doctest: +SKIP
    >>> summary.done, summary.failed, summary.images_per_second           # doctest: +SKIP
    (1200, 0, 141.5)
    """
    started = time.perf_counter()
    steps = _check_options(size, resize, mode, format, quality, workers, max_pixels)
    src_real = os.path.realpath(os.fspath(src))
    dst_real = os.path.realpath(os.fspath(dst))
    if not os.path.exists(src_real):
        raise FileNotFoundError(f"source folder {os.fspath(src)!r} does not exist")
    if not os.path.isdir(src_real):
        raise NotADirectoryError(f"source {os.fspath(src)!r} is a file: give the folder")
    if src_real == dst_real:
        raise ValueError("DST must not be SRC: outputs would replace the originals")
    dataset_mode = steps.mode or "RGB"
    if dataset is not None:
        if steps.size is None:
            raise ValueError("a dataset needs one image size: give size= (e.g. 256)")
        if not os.fspath(dataset).endswith((".npy", ".npz")):
            raise ValueError(f"dataset {os.fspath(dataset)!r} must end in .npy or .npz")
    if workers is None:
        import allcores

        workers = allcores.cpu_count()
    os.makedirs(dst_real, exist_ok=True)
    dataset_final = None
    if dataset is not None:
        dataset_final = _dataset_path(os.fspath(dataset), dst_real, src_real)

    manifest_path = os.path.join(dst_real, MANIFEST_FILE)
    settings = steps.settings()
    trusted, since_ns = _vouch(manifest_path, settings)
    found = _discover.discover(src_real, exclude=[dst_real], follow_links=follow_links)
    plan = _plan(found, src_real, dst_real, steps, dataset is not None)
    _discover.sweep_temps(plan.folders)

    ds_plan = None
    if dataset_final is not None:
        ds_plan = _dataset.create(dataset_final, plan.rels, steps.size, dataset_mode)
    job = Job(steps, ds_plan.target if ds_plan else None, force=force, since_ns=since_ns)
    try:
        ran = _execute(job, plan, int(workers), progress)
    except BaseException:
        if ds_plan is not None:
            _dataset.discard(ds_plan)
        raise
    if not trusted:
        _write_json(manifest_path, {"settings": settings, "resume": True})

    dataset_path = dataset_shape = None
    if ds_plan is not None:
        dataset_shape = _dataset.finish(ds_plan, set(ran.indexes(_FAILED)))
        dataset_path = ds_plan.final

    failures = sorted(plan.failures + ran.failures, key=lambda f: f.path)
    failures_path = os.path.join(dst_real, FAILURES_FILE)
    if failures:
        _write_json(failures_path, [
            {"path": f.path, "reason": f.reason, "error": f.error} for f in failures
        ])
    elif os.path.isfile(failures_path):
        os.unlink(failures_path)  # the last run's list no longer holds

    done = ran.count(_DONE)
    skipped = ran.count(_SKIPPED)
    serial_seconds = speedup = None
    if compare_serial:
        redo = [i for i, c in enumerate(ran.status) if c != _SKIPPED]
        if redo:
            sub = _Plan()
            sub.items = [plan.items[i] for i in redo]
            sub.rels = [plan.rels[i] for i in redo]
            serial_seconds = _serial_comparison(
                sub, steps, dst_real, src_real, steps.size if dataset else None, dataset_mode
            )
            speedup = serial_seconds / ran.seconds if ran.seconds > 0 else None
    seconds = time.perf_counter() - started - (serial_seconds or 0.0)
    return Summary(
        src=src_real,
        dst=dst_real,
        found=len(found),
        done=done,
        skipped=skipped,
        failed=len(failures),
        failures=tuple(failures),
        seconds=seconds,
        images_per_second=done / seconds if done and seconds > 0 else 0.0,
        workers=int(workers),
        serial_seconds=serial_seconds,
        speedup=speedup,
        failures_file=failures_path if failures else None,
        dataset=dataset_path,
        dataset_shape=dataset_shape,
    )
