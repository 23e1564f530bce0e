"""What happens to one image: open, check, orient, convert, resize, encode, write.

Everything here runs inside a worker process (or in the caller's process for the serial
comparison), one image at a time. The steps, in order::

    open (lazy: header only) -> pixel-count guard -> JPEG draft (DCT-domain shrink)
      -> decode -> working mode -> resize (stored orientation) -> EXIF orientation
      -> requested mode -> format-compatible mode -> encode -> temp file -> rename

Resizing happens *before* the EXIF rotation (on the stored pixels, with the target box turned
to match) because rotating a 256-pixel thumbnail is much cheaper than rotating the decoded
photo; the result is the same.

A failure never escapes as an exception: :func:`process_one` returns an :class:`Outcome` whose
``reason`` says in plain words what was wrong with the file, so one bad image never stops a
run of ten thousand.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Importing Pillow here is fine: this module is only imported by allcores.images, which is
# only imported by users who asked for image work (and by the CLI inside its handler).
from PIL import Image, UnidentifiedImageError

#: File name endings we look for, mapped to the Pillow format that writes them.
EXTENSION_FORMATS: dict[str, str] = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".jfif": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".gif": "GIF",
}

#: ``format=`` names accepted by :func:`allcores.images.process` -> (Pillow format, extension).
OUTPUT_FORMATS: dict[str, tuple[str, str]] = {
    "jpeg": ("JPEG", ".jpg"),
    "jpg": ("JPEG", ".jpg"),
    "png": ("PNG", ".png"),
    "webp": ("WEBP", ".webp"),
    "tiff": ("TIFF", ".tif"),
    "bmp": ("BMP", ".bmp"),
    "gif": ("GIF", ".gif"),
}

RESIZE_MODES = ("fit", "fill", "exact")
OUTPUT_MODES = ("RGB", "L", "RGBA")

#: Pillow's own default decompression-bomb limit (about 89.5 megapixels, a 1 GB RGB decode).
DEFAULT_MAX_PIXELS = 89_478_485

#: Pillow's reduce() fast path (a box filter by an integer factor) stops this far above the
#: final size, so the LANCZOS pass still sees enough pixels: ``Image.thumbnail``'s default.
REDUCING_GAP = 2.0

#: JPEG draft mode (libjpeg's scaled IDCT, 1/2 1/4 1/8) may shrink to this multiple of the
#: final size. The scaled IDCT is a proper low-pass, not a box, so it can go closer than
#: REDUCING_GAP: measured on W6 photos (1600x1200 -> 256), draft 1/4 + LANCZOS is within
#: 47-49 dB PSNR of a full decode + LANCZOS, closer than Pillow's own convert() + thumbnail()
#: (45-47 dB), and saves a 3-4 ms resample per image (a third of the per-image time).
DRAFT_GAP = 1.5

#: Transparent pixels are laid on this colour when an image loses its alpha channel
#: (``mode="RGB"``/``"L"``, or a JPEG output): white, like a page behind a transparent PNG.
ALPHA_BACKGROUND = (255, 255, 255)

#: EXIF orientation tag value -> the transpose that shows the image upright.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112

#: Modes each output format can hold; anything else is converted first (see _fit_format).
_FORMAT_MODES: dict[str, frozenset[str]] = {
    "JPEG": frozenset({"L", "RGB", "CMYK"}),
    "PNG": frozenset({"1", "L", "LA", "I;16", "P", "RGB", "RGBA"}),  # 32-bit I: no
    "WEBP": frozenset({"RGB", "RGBA"}),
    "BMP": frozenset({"1", "L", "P", "RGB"}),  # most readers ignore a BMP's alpha
    "GIF": frozenset({"1", "L", "P", "RGB", "RGBA"}),  # Pillow quantises RGB(A) itself
    "TIFF": frozenset({"1", "L", "LA", "I", "I;16", "F", "P", "RGB", "RGBA", "CMYK"}),
}

TEMP_SUFFIX = ".allcores-tmp"

#: The only formats an input (or an existing output) is opened as, whatever its extension:
#: the ones ``allcores images`` documents (camera JPEGs with a second frame, MPO, come
#: through Pillow's JPEG reader). Pillow would otherwise pick any of its ~40 readers by
#: content, so an EPS file saved as ``photo.jpg`` would reach Ghostscript, and rarely used
#: decoders (the usual home of decoder CVEs) would read untrusted files.
READ_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")


def open_image(path: str | io.BytesIO) -> Image.Image:
    """``Image.open`` limited to :data:`READ_FORMATS` (see there for why)."""
    return Image.open(path, formats=READ_FORMATS)


@dataclass(frozen=True)
class Steps:
    """The steps applied to every image; built by :func:`allcores.images.process`.

    Attributes:
        size: target box ``(width, height)``, or ``None`` to keep each image's size.
        resize: ``"fit"`` (inside the box, aspect kept, never enlarged), ``"fill"`` (cover
            the box, then centre-crop to exactly it) or ``"exact"`` (stretch to it).
        mode: ``"RGB"``, ``"L"``, ``"RGBA"``, or ``None`` to keep each image's own mode
            (converted only where the output format cannot hold it).
        format: Pillow format name to write (``"JPEG"``...), or ``None`` for the source's own.
        quality: JPEG/WebP quality, 1-100.
        max_pixels: images with more pixels than this are refused as decompression bombs.
    """

    size: tuple[int, int] | None = None
    resize: str = "fit"
    mode: str | None = None
    format: str | None = None
    quality: int = 85
    max_pixels: int = DEFAULT_MAX_PIXELS

    def settings(self) -> dict[str, Any]:
        """A JSON-ready dict; a change in it means earlier outputs are stale."""
        return {
            "size": list(self.size) if self.size else None,
            "resize": self.resize,
            "mode": self.mode,
            "format": self.format,
            "quality": self.quality,
        }


@dataclass(frozen=True)
class DatasetTarget:
    """Where a worker writes its image's row of the dataset array (see _dataset.py)."""

    path: str  # the temporary .npy file, already sized and with its header written
    offset: int  # byte offset of row 0
    width: int
    height: int
    mode: str  # "RGB", "L" or "RGBA"

    @property
    def row_bytes(self) -> int:
        return self.width * self.height * len(self.mode)


@dataclass(frozen=True)
class Job:
    """Everything a worker needs besides the item; sent once per run, not once per image."""

    steps: Steps
    dataset: DatasetTarget | None = None
    force: bool = False
    #: Existing outputs older than this (ns, the file system's clock) are redone: they were
    #: made before the run that the manifest vouches for (see ``_run.process``). 0: any age.
    since_ns: int = 0


@dataclass(frozen=True)
class Item:
    """One image to do. ``row`` is its row in the dataset, or -1 when none is written."""

    index: int
    src: str
    out: str
    row: int = -1


@dataclass(frozen=True)
class Outcome:
    """What happened to one image. ``status`` is ``"done"``, ``"skipped"`` or ``"failed"``."""

    index: int
    status: str
    reason: str = ""
    error: str = ""  # the exception type behind a failure, for the failures file


def parse_size(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """``256`` -> (256, 256); ``"320x240"`` -> (320, 240).

    >>> parse_size("320x240")
    (320, 240)
    """
    if isinstance(text, tuple):
        width, height = text
    elif isinstance(text, int):
        width = height = text
    else:
        parts = str(text).lower().replace("*", "x").split("x")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            numbers = []
        if len(numbers) == 1:
            width = height = numbers[0]
        elif len(numbers) == 2:
            width, height = numbers
        else:
            raise ValueError(f"size {text!r} is not N or WxH, e.g. 256 or 320x240")
    if width < 1 or height < 1:
        raise ValueError(f"size {text!r} must be at least 1x1")
    return int(width), int(height)


# ---------------------------------------------------------------------------------------------
# geometry (pure: sizes in, sizes out)


def target_size(size: tuple[int, int], box: tuple[int, int], resize: str) -> tuple[int, int]:
    """The output size of an image of ``size`` for the box and resize mode.

    >>> target_size((1600, 1200), (256, 256), "fit")
    (256, 192)
    """
    w, h = size
    bw, bh = box
    if resize == "fit":
        if w <= bw and h <= bh:
            return w, h  # fit never enlarges, like Image.thumbnail
        if w * bh >= h * bw:  # wider than the box: width is the limit
            return bw, max(1, round(h * bw / w))
        return max(1, round(w * bh / h)), bh
    return bw, bh  # fill and exact both end at exactly the box


def _scale_needed(size: tuple[int, int], box: tuple[int, int], resize: str) -> tuple[float, float]:
    """Per-axis scale factors from ``size`` to the pixels the resize will actually use."""
    w, h = size
    bw, bh = box
    if resize == "fit":
        s = min(bw / w, bh / h, 1.0)
        return s, s
    if resize == "fill":
        s = max(bw / w, bh / h)
        return s, s
    return bw / w, bh / h


def _draft_request(size: tuple[int, int], box: tuple[int, int], resize: str) -> tuple[int, int]:
    """The smallest size JPEG draft may shrink to and still leave DRAFT_GAP of headroom."""
    sx, sy = _scale_needed(size, box, resize)
    w, h = size
    return max(1, int(w * sx * DRAFT_GAP + 0.5)), max(1, int(h * sy * DRAFT_GAP + 0.5))


def _resize(img: Image.Image, box: tuple[int, int], resize: str) -> Image.Image:
    """Resize stored pixels to ``box`` (already turned to the stored orientation)."""
    w, h = img.size
    out = target_size((w, h), box, resize)
    if resize == "fill":
        scale = max(box[0] / w, box[1] / h)
        crop_w, crop_h = box[0] / scale, box[1] / scale
        left, top = (w - crop_w) / 2, (h - crop_h) / 2
        crop = (left, top, left + crop_w, top + crop_h)
        if out == (w, h) and crop == (0, 0, w, h):
            return img
        return img.resize(out, Image.Resampling.LANCZOS, box=crop, reducing_gap=REDUCING_GAP)
    if out == (w, h):
        return img
    return img.resize(out, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)


# ---------------------------------------------------------------------------------------------
# modes


def _drop_alpha(img: Image.Image) -> Image.Image:
    """RGBA/LA -> RGB/L laid on ALPHA_BACKGROUND (a plain convert would show hidden colours)."""
    base_mode = "L" if img.mode == "LA" else "RGB"
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", img.size, (*ALPHA_BACKGROUND, 255))
    background.alpha_composite(rgba)
    return background.convert(base_mode)


def _working_mode(img: Image.Image) -> Image.Image:
    """Bring odd modes to ones the LANCZOS filter handles (it treats P and 1 as NEAREST)."""
    mode = img.mode
    if mode in ("RGB", "L", "RGBA", "LA", "I", "F", "CMYK"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        return img.convert("RGBA" if has_alpha else "RGB")
    if mode.startswith("I;16"):
        return img.convert("I")  # reduce() (the resize fast path) refuses I;16
    return img.convert("RGB")  # YCbCr, LAB, HSV, RGBX, RGBa, La...


def _to_8bit_l(img: Image.Image) -> Image.Image:
    """16/32-bit greyscale to 8-bit by scaling, not by Pillow's clip at 255."""
    if img.mode == "F":
        if img.getextrema()[1] <= 1.0:  # float images usually hold 0.0-1.0
            img = img.point(lambda v: v * 255)
        return img.convert("L")
    img = img.convert("I")
    if img.getextrema()[1] > 255:
        img = img.point(lambda v: v / 256)
    return img.convert("L")


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert to ``mode``, handling alpha and high bit depths sensibly."""
    if img.mode == mode:
        return img
    if mode in ("RGB", "L"):
        if img.mode in ("RGBA", "LA"):
            img = _drop_alpha(img)
        elif img.mode in ("I", "F", "I;16"):
            img = _to_8bit_l(img)
        return img if img.mode == mode else img.convert(mode)
    if img.mode in ("I", "F", "I;16"):
        img = _to_8bit_l(img)
    return img.convert(mode)


def _fit_format(img: Image.Image, fmt: str) -> Image.Image:
    """Convert only when ``fmt`` cannot hold the image's mode."""
    allowed = _FORMAT_MODES.get(fmt)
    if allowed is None or img.mode in allowed:
        return img
    if img.mode == "I" and "I;16" in allowed:
        return img.convert("I;16")  # 16-bit PNG: keep the depth a PNG can hold
    if img.mode in ("RGBA", "LA", "PA"):
        return _to_mode(img, "RGBA" if "RGBA" in allowed else "RGB" if img.mode != "LA" else "L")
    if img.mode in ("I", "F", "I;16"):
        return _to_8bit_l(img)
    return _to_mode(img, "RGB")


def _save_params(fmt: str, quality: int) -> dict[str, Any]:
    if fmt == "JPEG":
        return {"quality": quality}
    if fmt == "WEBP":
        return {"quality": quality, "method": 4}
    if fmt == "TIFF":
        return {"compression": "tiff_deflate"}
    return {}


# ---------------------------------------------------------------------------------------------
# one image


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1-8), or 0 when there is none or it cannot be read."""
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 0) or 0)
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return 0


def transform(img: Image.Image, steps: Steps, fmt: str) -> Image.Image:
    """Apply ``steps`` to an opened (not yet loaded) image; returns the image to encode."""
    orientation = _orientation(img)
    transpose = _ORIENTATION_TRANSPOSE.get(orientation)
    turned = orientation in (5, 6, 7, 8)  # stored pixels are sideways to what is shown

    box = None
    if steps.size is not None:
        box = (steps.size[1], steps.size[0]) if turned else steps.size
        if img.format in ("JPEG", "MPO"):  # MPO: camera JPEGs with a second frame
            # libjpeg decodes straight to 1/2, 1/4 or 1/8 scale: the biggest single saving
            # on photos. draft() keeps at least the requested size, so quality holds.
            img.draft(img.mode, _draft_request(img.size, box, steps.resize))
    img.load()
    loaded_mode = img.mode
    img = _working_mode(img)
    if steps.mode == "L" and img.mode != "L":
        img = _to_mode(img, "L")  # fewer channels to resample
    if box is not None:
        img = _resize(img, box, steps.resize)
    if transpose is not None:
        img = img.transpose(transpose)
    if steps.mode is not None:
        img = _to_mode(img, steps.mode)
    elif loaded_mode.startswith("I;16") and img.mode == "I":
        img = img.convert("I;16")  # back to 16 bits (clipping LANCZOS overshoot)
    return _fit_format(img, fmt)


def output_format(src: str, steps: Steps) -> str:
    """The Pillow format an image's output is written in."""
    if steps.format is not None:
        return steps.format
    return EXTENSION_FORMATS[os.path.splitext(src)[1].lower()]


def encode(img: Image.Image, fmt: str, steps: Steps, icc_profile: bytes | None) -> bytes:
    buffer = io.BytesIO()
    params = _save_params(fmt, steps.quality)
    if icc_profile and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        params["icc_profile"] = icc_profile
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def temp_name(out: str) -> str:
    """A hidden name beside ``out``, unique per process, swept if a run is killed."""
    head, tail = os.path.split(out)
    return os.path.join(head, f".{tail}.{os.getpid()}{TEMP_SUFFIX}")


def write_atomic(out: str, data: bytes) -> None:
    """Write ``data`` to ``out`` through a temporary name, so ``out`` is whole or absent."""
    tmp = temp_name(out)
    try:
        # O_NOFOLLOW: never write through a symbolic link planted at the temporary name.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, out)  # replaces a link at ``out`` itself, never its target
    except BaseException:
        # Ctrl-C (KeyboardInterrupt) and write errors both land here; a SIGKILL cannot,
        # and the run's closing sweep (see _discover.sweep_temps) covers that case.
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _icc_for(src_mode: str, out_mode: str, info: dict[str, Any]) -> bytes | None:
    """Keep the colour profile only when the colour model did not change."""
    profile = info.get("icc_profile")
    if not profile:
        return None
    colour = {"L": "L", "LA": "L", "RGB": "RGB", "RGBA": "RGB", "P": "RGB", "CMYK": "CMYK"}
    same = colour.get(src_mode) is not None and colour.get(src_mode) == colour.get(out_mode)
    return profile if same else None


def _is_complete(src: str, out: str, steps: Steps, since_ns: int = 0) -> bool:
    """An output counts as done when it is a non-empty regular file no older than its source,
    in the format and of the size these steps make from that source.

    Outputs appear only by rename, so one that exists is whole; the age check redoes images
    whose source was edited after the last run. The format and size checks (two header reads,
    no decoding) keep an output of other steps from being skipped into this run, e.g. a
    size-32 output left in DST without a manifest, which would otherwise be cropped into a
    size-16 dataset.
    """
    import stat

    try:
        out_stat = os.lstat(out)
        src_stat = os.stat(src)
    except OSError:
        return False
    if not (
        stat.S_ISREG(out_stat.st_mode)
        and out_stat.st_size > 0
        and out_stat.st_mtime_ns >= max(src_stat.st_mtime_ns, since_ns)
    ):
        return False
    try:
        with warnings.catch_warnings(), _pixel_limit():
            warnings.simplefilter("ignore")
            with open_image(out) as made:
                made_format, made_size = made.format, made.size
            with open_image(src) as source:
                shown = source.size
                if _orientation(source) in (5, 6, 7, 8):
                    shown = (shown[1], shown[0])
    except Exception:  # unreadable either way: not complete, the image is redone (or fails)
        return False
    expected_format = output_format(src, steps)
    if made_format != expected_format and {made_format, expected_format} != {"JPEG", "MPO"}:
        return False
    if steps.size is None:
        return made_size == shown
    return made_size == target_size(shown, steps.size, steps.resize)


def _row_from_bytes(data: bytes | None, path: str | None, target: DatasetTarget) -> bytes:
    """Decode an output (from memory or disk) into its dataset row: what is on disk, exactly."""
    with open_image(io.BytesIO(data) if data is not None else path) as img:
        img.load()
        img = _to_mode(_working_mode(img), target.mode)
        if img.size != (target.width, target.height):
            # fit-mode images are smaller than the box on one side: centre them on black.
            canvas = Image.new(target.mode, (target.width, target.height))
            canvas.paste(img, ((target.width - img.width) // 2, (target.height - img.height) // 2))
            img = canvas
        return img.tobytes()


def _write_row(target: DatasetTarget, row: int, pixels: bytes) -> None:
    """Write one row straight into the dataset file: no copy travels through the parent."""
    if len(pixels) != target.row_bytes:
        raise ValueError(f"dataset row is {len(pixels)} bytes, expected {target.row_bytes}")
    fd = os.open(target.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.pwrite(fd, pixels, target.offset + row * target.row_bytes)
    finally:
        os.close(fd)


def describe_error(exc: BaseException, src: str) -> str:
    """A plain-words reason for the failures list."""
    if isinstance(exc, (Image.DecompressionBombError, _BombError)):
        return f"decompression bomb: {exc} (raise the limit with --max-pixels if it is real)"
    if isinstance(exc, _EmptyError):
        return "empty file (0 bytes)"
    if isinstance(exc, UnidentifiedImageError):
        return (
            "not an image in a format allcores images reads (JPEG, PNG, WebP, TIFF, BMP, "
            "GIF); other formats are refused whatever the file's extension"
        )
    if isinstance(exc, _WriteError):
        return f"cannot write the output: {exc}"
    if isinstance(exc, _EncodeError):
        return str(exc)
    if isinstance(exc, FileNotFoundError) and os.path.islink(src):
        return "unreadable: broken symbolic link"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT,
                                                  errno.EISDIR, errno.ELOOP, errno.EIO):
        return f"unreadable: {exc.strerror}"
    text = str(exc)
    if "truncated" in text:
        return f"truncated image: {text}"
    if isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)):
        return f"corrupt image data: {text or type(exc).__name__}"
    return f"{type(exc).__name__}: {text}"


class _BombError(Exception):
    pass


class _EmptyError(Exception):
    pass


class _WriteError(Exception):
    pass


class _EncodeError(Exception):
    pass


@contextlib.contextmanager
def _pixel_limit() -> Iterator[None]:
    """Pillow's own bomb check off while ours (the same test, right after the header is read,
    before any decoding) is in force: one limit, one message. Put back afterwards: the worker
    may run other people's tasks next."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def process_one(job: Job, item: Item) -> Outcome:
    """Do one image. Never raises for a bad image; returns its :class:`Outcome`."""
    steps = job.steps
    try:
        if not job.force and _is_complete(item.src, item.out, steps, job.since_ns):
            if job.dataset is not None and item.row >= 0:
                _write_row(job.dataset, item.row, _row_from_bytes(None, item.out, job.dataset))
            return Outcome(item.index, "skipped")
        fmt = output_format(item.src, steps)
        # Pillow's own warnings (odd EXIF, DecompressionBombWarning) must not turn into
        # failures under `-W error`; the pixel limit below is the check that counts.
        with warnings.catch_warnings(), _pixel_limit():
            warnings.simplefilter("ignore")
            if os.stat(item.src).st_size == 0:
                raise _EmptyError()
            with open_image(item.src) as img:
                w, h = img.size
                if w * h > steps.max_pixels:
                    raise _BombError(
                        f"{w}x{h} = {w * h:,} pixels, over the limit of {steps.max_pixels:,}"
                    )
                src_mode = img.mode
                result = transform(img, steps, fmt)
                # encode inside the block: closing the file may free a returned-as-is image
                icc = _icc_for(src_mode, result.mode, img.info)
                try:
                    data = encode(result, fmt, steps, icc)
                except Exception as exc:
                    raise _EncodeError(f"cannot write it as {fmt} ({result.mode}): {exc}")
        try:
            write_atomic(item.out, data)
        except OSError as exc:
            raise _WriteError(exc.strerror or str(exc)) from exc
        if job.dataset is not None and item.row >= 0:
            _write_row(job.dataset, item.row, _row_from_bytes(data, None, job.dataset))
        return Outcome(item.index, "done")
    except Exception as exc:
        return Outcome(
            item.index, "failed", describe_error(exc, item.src),
            type(exc).__name__,
        )
