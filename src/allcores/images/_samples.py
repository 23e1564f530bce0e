"""Deterministic, photo-like sample images, so the image tool can be shown on a bare machine.

Image ``i`` of seed ``s`` is always the same file: a two-colour gradient, a soft low-frequency
"lighting" field, a few shapes and fine sensor-like noise, saved as JPEG quality 90 (the W6
recipe of the benchmarks). The set is mixed on purpose, so every step of the pipeline has work:

- sizes from 640x480 to 1920x1080, landscape and portrait;
- about 1 in 8 greyscale JPEGs;
- about 1 in 8 JPEGs whose pixels are stored sideways with an EXIF orientation tag (3, 6 or 8)
  that turns them upright; the upright picture has a red square in its top-left corner;
- about 1 in 10 PNGs with an alpha channel (a transparent border);
- spread over first-level folders (``CLASSES``) that become the dataset labels.
"""

from __future__ import annotations

import os

from allcores.images._steps import write_atomic

CLASSES = ("beach", "city", "forest", "night")
SIZES = ((640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200), (1920, 1080))
#: Orientation tag -> transpose that stores the upright picture so that the tag restores it.
_STORE_SIDEWAYS = {3: "ROTATE_180", 6: "ROTATE_90", 8: "ROTATE_270"}
MARKER_FRACTION = 8  # the red square is 1/8 of the shorter side
NOISE = 12  # +- grey levels of per-pixel noise


def sample_name(index: int) -> str:
    """Relative path of sample ``index`` (its kind decides the extension)."""
    kind = _kind(index)
    ext = ".png" if kind == "alpha" else ".jpg"
    return f"{CLASSES[index % len(CLASSES)]}/img_{index:05d}{ext}"


def _kind(index: int) -> str:
    # fixed by index, not by the RNG, so each kind is present even in small sets
    if index % 10 == 9:
        return "alpha"
    if index % 8 == 3:
        return "grey"
    if index % 8 == 6:
        return "oriented"
    return "colour"


def photo(index: int, seed: int, size: tuple[int, int] | None = None):  # -> PIL.Image.Image
    """The upright RGB picture of sample ``index`` (before greyscale/orientation/alpha)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, index])
    if size is None:
        w, h = SIZES[int(rng.integers(len(SIZES)))]
        if rng.random() < 0.25:
            w, h = h, w  # portrait
    else:
        w, h = size
    # Smooth parts (a two-colour gradient under soft "lighting") are computed at 1/8 scale
    # and blown up: they have no fine detail, and this keeps a 1600x1200 sample near 40 ms.
    sw, sh = max(2, w // 8), max(2, h // 8)
    c0, c1 = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    t = np.linspace(0.0, 1.0, sw, dtype=np.float32)[None, :, None]
    u = np.linspace(0.0, 1.0, sh, dtype=np.float32)[:, None, None]
    mix = t * 0.7 + u * 0.3
    small = c0 * (1 - mix) + c1 * mix  # sh x sw x 3 gradient
    light = Image.fromarray(rng.integers(0, 256, size=(6, 8), dtype=np.uint8), "L")
    light = np.asarray(light.resize((sw, sh), Image.Resampling.BICUBIC), dtype=np.float32)
    small *= (0.65 + 0.7 * light / 255.0)[:, :, None]
    img = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8), "RGB")
    img = img.resize((w, h), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 12))):
        x0, x1 = sorted(int(v) for v in rng.integers(0, w, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, h, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = int(rng.integers(3))
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 12)))
    # fine noise, like a camera sensor: it is what makes the JPEGs photo-sized
    pixels = np.asarray(img, dtype=np.int16)
    pixels += rng.integers(-NOISE, NOISE + 1, size=pixels.shape, dtype=np.int16)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    m = max(1, min(w, h) // MARKER_FRACTION)
    img.paste((255, 0, 0), (0, 0, m, m))
    return img


def encode_sample(index: int, seed: int) -> bytes:
    """The file bytes of sample ``index``."""
    import io

    from PIL import Image

    img = photo(index, seed)
    kind = _kind(index)
    buffer = io.BytesIO()
    if kind == "alpha":
        alpha = Image.new("L", img.size, 0)
        border = max(1, min(img.size) // 10)
        alpha.paste(255, (border, border, img.width - border, img.height - border))
        img.putalpha(alpha)
        img.save(buffer, "PNG", compress_level=1)
    elif kind == "oriented":
        tag = (3, 6, 8)[index % 3]
        stored = img.transpose(getattr(Image.Transpose, _STORE_SIDEWAYS[tag]))
        exif = Image.Exif()
        exif[0x0112] = tag
        stored.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    else:
        if kind == "grey":
            img = img.convert("L")
        img.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _make_one(args: tuple[str, int, int]) -> str:
    folder, index, seed = args
    path = os.path.join(folder, *sample_name(index).split("/"))
    if not os.path.exists(path):  # deterministic content: an existing file is the same one
        write_atomic(path, encode_sample(index, seed))
    return path


def make_samples(
    folder: str | os.PathLike[str], count: int, *, seed: int = 0, workers: int | None = None
) -> str:
    """Write ``count`` sample images under ``folder`` (on every core); returns ``folder``.

    Existing files are kept, so a second call is instant.

    >>> make_samples("/tmp/samples", 20)  # doctest: +SKIP
    '/tmp/samples'
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    folder = os.fspath(folder)
    folders = [os.path.join(folder, name) for name in CLASSES]
    for path in folders:
        os.makedirs(path, exist_ok=True)
    todo = [
        (folder, i, seed)
        for i in range(count)
        if not os.path.exists(os.path.join(folder, *sample_name(i).split("/")))
    ]
    if todo:
        from allcores._batch import BatchRun
        from allcores.images._discover import sweep_temps

        try:
            with BatchRun(workers, tool="samples") as run:
                for _ in run.imap(_make_one, todo, ordered=False):
                    pass
        finally:
            sweep_temps(folders)  # what a Ctrl-C'd worker was writing
    return folder
