"""The numbers a run ends with (frozen), and their renderings: text for people, JSON for tools."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class ImageFailure:
    """An image that could not be done.

    Attributes:
        path: the source path relative to SRC (``"/"`` separators).
        reason: what was wrong, in plain words (``"empty file (0 bytes)"``...).
        error: the exception type behind it, for scripts (``"UnidentifiedImageError"``).
    """

    path: str
    reason: str
    error: str = ""


@dataclass(frozen=True)
class Summary:
    """What :func:`allcores.images.process` did.

    Attributes:
        src: the folder read.
        dst: the folder written.
        found: images found under ``src``.
        done: images written by this run.
        skipped: images whose output was already complete and newer than the source.
        failed: images that could not be done; see ``failures``.
        failures: one :class:`ImageFailure` per failed image, sorted by path.
        seconds: wall time of the processing (discovery and dataset assembly included).
        images_per_second: ``done / seconds`` (0 when nothing was done).
        workers: processes used.
        serial_seconds: with ``compare_serial=True``, the time the same images took on one
            core in this process; otherwise ``None``.
        speedup: ``serial_seconds / seconds`` of the images done by both; otherwise ``None``.
        failures_file: the JSON list of failures written in ``dst``, or ``None`` when none.
        dataset: the dataset file written, or ``None``.
        dataset_shape: its array's shape ``(N, H, W, C)``, or ``None``.
        report: the HTML run report written (``report=``), or ``None``.
        stats: where the run's time went: an :class:`allcores.RunStats` of the image work
            (in JSON under ``"stats"``; not part of equality).
    """

    src: str
    dst: str
    found: int
    done: int
    skipped: int
    failed: int
    failures: tuple[ImageFailure, ...]
    seconds: float
    images_per_second: float
    workers: int
    serial_seconds: float | None = None
    speedup: float | None = None
    failures_file: str | None = None
    dataset: str | None = None
    dataset_shape: tuple[int, ...] | None = None
    report: str | None = None
    stats: Any = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """True when no image failed."""
        return self.failed == 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "stats"}
        data["failures"] = [asdict(f) for f in self.failures]
        data["stats"] = self.stats.to_dict() if self.stats is not None else None
        data["dataset_shape"] = list(self.dataset_shape) if self.dataset_shape else None
        return data

    def to_json(self) -> str:
        """The summary as one line of JSON (what ``allcores images --json`` prints)."""
        return json.dumps(self.to_dict())

    def render(self, max_failures: int = 20) -> str:
        """The closing report for people."""
        lines = [
            f"allcores images: {self.found} found: {self.done} done, {self.skipped} skipped, "
            f"{self.failed} failed in {self.seconds:.2f} s "
            f"({self.images_per_second:.1f} images/s on {self.workers} workers)",
        ]
        if self.found == 0:
            lines.append(f"  no images under {self.src} (looked for .jpg .jpeg .png .webp "
                         ".tif .tiff .bmp .gif)")
        if self.speedup is not None and self.serial_seconds is not None:
            lines.append(
                f"  one core: {self.serial_seconds:.2f} s for the same images; "
                f"speedup {self.speedup:.2f}x with {self.workers} workers"
            )
        if self.dataset is not None:
            shape = " x ".join(str(n) for n in self.dataset_shape or ())
            lines.append(f"  dataset: {self.dataset} (uint8 {shape})")
        if self.failures:
            lines.append(f"  failed ({self.failed}), listed in {self.failures_file}:")
            for failure in self.failures[:max_failures]:
                lines.append(f"    {failure.path}: {failure.reason}")
            if self.failed > max_failures:
                lines.append(f"    ... and {self.failed - max_failures} more")
        lines.append(f"  output: {self.dst}")
        if self.report is not None:
            lines.append(f"  report: {self.report}")
        return "\n".join(lines)
