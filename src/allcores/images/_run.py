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
import time
from collections.abc import Callable
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
        self.stats: Any = None  # the run's RunStats

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
    report: str | os.PathLike[str] | None = None,
) -> _Ran:
    """Run the plan on ``workers`` processes (or in this one, ``serial=True``).

    ``per_image`` is a seam for the tests (a function that kills its worker on one image).
    The engine is reached through :class:`allcores._batch.BatchRun` (progress bar, statistics,
    report); images always run in worker processes unless ``serial``, so a decoder that crashes
    on a hostile file fails that image alone, even with one worker.
    """
    from allcores._batch import BatchRun

    fn = functools.partial(per_image, job)
    ran = _Ran(len(plan.items))
    crashes: list[BaseException] = []
    counts = {"done": 0, "skipped": 0, "failed": 0}
    start = time.perf_counter()
    run = BatchRun(1 if serial else workers, tool="images", progress=progress,
                   total=len(plan.items), unit="img", report=report)
    stream = run.imap(fn, plan.items, ordered=False, on_error="collect", isolate=not serial)
    try:
        with run:
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
                run.advance(1, f"{counts['done']} done, {counts['skipped']} skipped, "
                               f"{counts['failed']} failed")
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
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # an interrupted imap stops feeding work to the pool
        _discover.sweep_temps(plan.folders)
    ran.seconds = time.perf_counter() - start
    ran.stats = run.stats
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
    report: str | os.PathLike[str] | None = None,
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
        report: a path: write an HTML report of where the run's time went (see
            :func:`allcores.report`); ``summary.stats`` has the numbers either way.

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
    steps = _check_options(size, resize, mode, format, quality, max_pixels)
    from allcores._batch import resolve_workers

    n_workers = resolve_workers(workers)
    paths = _check_paths(src, dst, dataset, steps)
    if report is not None:  # checked once DST exists (a report beside the outputs is usual)
        from allcores._report import check_path

        check_path(report)  # before any work: a bad path must not cost a whole run
    prepared = _prepare(paths, steps, follow_links, force)
    try:
        ran = _execute(prepared.job, prepared.plan, n_workers, progress, report=report)
    except BaseException:
        if prepared.dataset is not None:
            _dataset.discard(prepared.dataset)
        raise
    failures, failures_path, dataset_path, dataset_shape = _finish(paths, steps, prepared, ran)
    serial_seconds = None
    if compare_serial:
        serial_seconds = _compare_serial(paths, steps, prepared.plan, ran)
    seconds = time.perf_counter() - started - (serial_seconds or 0.0)
    done = ran.count(_DONE)
    return Summary(
        src=paths.src,
        dst=paths.dst,
        found=prepared.found,
        done=done,
        skipped=ran.count(_SKIPPED),
        failed=len(failures),
        failures=tuple(failures),
        seconds=seconds,
        images_per_second=done / seconds if done and seconds > 0 else 0.0,
        workers=n_workers,
        serial_seconds=serial_seconds,
        speedup=(serial_seconds / ran.seconds
                 if serial_seconds is not None and ran.seconds > 0 else None),
        failures_file=failures_path if failures else None,
        dataset=dataset_path,
        dataset_shape=dataset_shape,
        report=os.fspath(report) if report is not None else None,
        stats=ran.stats,
    )


# -- the steps of a run, in order -------------------------------------------------------------


class _Paths:
    """SRC, DST and the dataset file, resolved and checked (nothing written yet but DST)."""

    def __init__(self, src: str, dst: str, dataset: str | None) -> None:
        self.src = src
        self.dst = dst
        self.dataset = dataset


def _check_paths(src: Any, dst: Any, dataset: Any, steps: Steps) -> _Paths:
    """Resolve SRC and DST and refuse what cannot work, before anything is written but DST."""
    src_real = os.path.realpath(os.fspath(src))
    dst_real = os.path.realpath(os.fspath(dst))
    if not os.path.exists(src_real):
        raise FileNotFoundError(f"source folder {os.fspath(src)!r} does not exist")
    if not os.path.isdir(src_real):
        raise NotADirectoryError(f"source {os.fspath(src)!r} is a file: give the folder")
    if src_real == dst_real:
        raise ValueError("DST must not be SRC: outputs would replace the originals")
    if dataset is not None:
        if steps.size is None:
            raise ValueError("a dataset needs one image size: give size= (e.g. 256)")
        if not os.fspath(dataset).endswith((".npy", ".npz")):
            raise ValueError(f"dataset {os.fspath(dataset)!r} must end in .npy or .npz")
    os.makedirs(dst_real, exist_ok=True)
    final = None if dataset is None else _dataset_path(os.fspath(dataset), dst_real, src_real)
    return _Paths(src_real, dst_real, final)


class _Prepared:
    """What the parent set up before the images run: the plan, the job, the dataset file."""

    def __init__(self, plan: _Plan, job: Job, dataset: Any, found: int, trusted: bool,
                 settings: dict[str, Any]) -> None:
        self.plan = plan
        self.job = job
        self.dataset = dataset
        self.found = found
        self.trusted = trusted
        self.settings = settings


def _prepare(paths: _Paths, steps: Steps, follow_links: bool, force: bool) -> _Prepared:
    """Vouch for earlier outputs (the manifest), find the images, plan their outputs, make
    the folders, sweep stale temp files and lay out the dataset file."""
    settings = steps.settings()
    trusted, since_ns = _vouch(os.path.join(paths.dst, MANIFEST_FILE), settings)
    found = _discover.discover(paths.src, exclude=[paths.dst], follow_links=follow_links)
    plan = _plan(found, paths.src, paths.dst, steps, paths.dataset is not None)
    _discover.sweep_temps(plan.folders)
    ds_plan = None
    if paths.dataset is not None:
        ds_plan = _dataset.create(paths.dataset, plan.rels, steps.size, steps.mode or "RGB")
    job = Job(steps, ds_plan.target if ds_plan else None, force=force, since_ns=since_ns)
    return _Prepared(plan, job, ds_plan, len(found), trusted, settings)


def _finish(
    paths: _Paths, steps: Steps, prepared: _Prepared, ran: _Ran
) -> tuple[list[ImageFailure], str, str | None, tuple[int, ...] | None]:
    """Mark the outputs trusted, close the dataset, and write (or remove) the failures file."""
    if not prepared.trusted:
        _write_json(os.path.join(paths.dst, MANIFEST_FILE),
                    {"settings": prepared.settings, "resume": True})
    dataset_path = dataset_shape = None
    if prepared.dataset is not None:
        dataset_shape = _dataset.finish(prepared.dataset, set(ran.indexes(_FAILED)))
        dataset_path = prepared.dataset.final
    failures = sorted(prepared.plan.failures + ran.failures, key=lambda f: f.path)
    failures_path = os.path.join(paths.dst, FAILURES_FILE)
    if failures:
        _write_json(failures_path, [
            {"path": f.path, "reason": f.reason, "error": f.error} for f in failures
        ])
    elif os.path.isfile(failures_path):
        os.unlink(failures_path)  # the last run's list no longer holds
    return failures, failures_path, dataset_path, dataset_shape


def _compare_serial(paths: _Paths, steps: Steps, plan: _Plan, ran: _Ran) -> float | None:
    """Seconds the images this run did (not skipped) take on one core, in this process."""
    redo = [i for i, c in enumerate(ran.status) if c != _SKIPPED]
    if not redo:
        return None
    sub = _Plan()
    sub.items = [plan.items[i] for i in redo]
    sub.rels = [plan.rels[i] for i in redo]
    return _serial_comparison(sub, steps, paths.dst, paths.src,
                              steps.size if paths.dataset else None, steps.mode or "RGB")
