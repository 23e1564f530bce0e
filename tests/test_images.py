"""allcores.images: the per-image steps, the library call end to end on real worker processes.

Images are made here with Pillow (small, so the suite stays fast); every test checks what is
on disk afterwards: sizes, modes, orientation, the failures file, the dataset's pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

import allcores.images
from allcores.images import _steps
from allcores.images._steps import Item, Job, Steps, parse_size, process_one, target_size

RED = (255, 0, 0)


def marked(size, colour=(40, 90, 160)):
    """An upright RGB picture with a red square in its top-left corner."""
    img = Image.new("RGB", size, colour)
    m = min(size) // 4
    img.paste(RED, (0, 0, m, m))
    return img


def save_oriented(img, path, tag):
    """Store ``img`` sideways so that EXIF orientation ``tag`` turns it upright again."""
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
            8: Image.Transpose.ROTATE_270}[tag]
    exif = Image.Exif()
    exif[0x0112] = tag
    img.transpose(undo).save(path, "JPEG", quality=95, exif=exif.tobytes())


def png_bomb(path, width=100_000, height=100_000):
    """A 60-byte PNG whose header claims width x height pixels."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    path.write_bytes(data)


def is_red(pixel):
    r, g, b = pixel[:3]
    return r > 200 and g < 60 and b < 60


def tree_hash(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                with open(p, "rb") as f:
                    out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def leftovers(folder):
    return [
        os.path.join(root, n)
        for root, dirs, files in os.walk(folder)
        for n in files + dirs
        if n.endswith(_steps.TEMP_SUFFIX) or ".tmp" in n
    ]


@pytest.fixture
def src(tmp_path):
    """A small tree with two classes and every kind of input the tool must handle."""
    root = tmp_path / "src"
    (root / "cats").mkdir(parents=True)
    (root / "dogs" / "deep").mkdir(parents=True)
    marked((640, 480)).save(root / "cats" / "wide.jpg", quality=90)
    marked((300, 500)).save(root / "cats" / "tall.png")
    save_oriented(marked((600, 400)), root / "dogs" / "turned.jpg", 6)
    marked((400, 300)).convert("L").save(root / "dogs" / "grey.jpg")
    rgba = marked((200, 200)).convert("RGBA")
    rgba.putalpha(Image.new("L", (200, 200), 0).point(lambda _: 0))  # fully transparent
    rgba.save(root / "dogs" / "deep" / "clear.png")
    marked((120, 90)).convert("P").save(root / "dogs" / "deep" / "pal.gif")
    marked((100, 80)).save(root / "small.webp")
    marked((160, 120)).save(root / "cats" / "scan.TIFF")
    marked((160, 120)).save(root / "cats" / "paint.bmp")
    (root / "notes.txt").write_text("not an image, and not named like one")
    return root


def bad_files(root):
    """Every kind of bad input; returns {relative path: words its reason must contain}."""
    (root / "bad").mkdir()
    (root / "bad" / "empty.jpg").write_bytes(b"")
    (root / "bad" / "text.png").write_text("hello, I am not a PNG")
    good = root / "bad" / "full.jpg"
    marked((400, 300)).save(good, quality=90)
    data = good.read_bytes()
    good.unlink()
    (root / "bad" / "cut.jpg").write_bytes(data[: len(data) // 3])
    png_bomb(root / "bad" / "bomb.png")
    os.symlink(root / "bad" / "missing.jpg", root / "bad" / "gone.jpg")
    return {
        "bad/empty.jpg": "empty file",
        "bad/text.png": "not an image",
        "bad/cut.jpg": "truncated",
        "bad/bomb.png": "decompression bomb",
        "bad/gone.jpg": "broken symbolic link",
    }


# --------------------------------------------------------------------------------------------
# pure helpers


def test_parse_size_accepts_n_and_wxh_and_refuses_nonsense():
    assert parse_size("256") == (256, 256)
    assert parse_size(64) == (64, 64)
    assert parse_size("320x240") == (320, 240)
    assert parse_size((3, 4)) == (3, 4)
    for bad in ("", "0", "12x", "axb", "1x2x3", "-4"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)


@pytest.mark.parametrize(
    ("size", "box", "mode", "expected"),
    [
        ((1600, 1200), (256, 256), "fit", (256, 192)),
        ((1200, 1600), (256, 256), "fit", (192, 256)),
        ((100, 80), (256, 256), "fit", (100, 80)),  # fit never enlarges
        ((1000, 10), (256, 256), "fit", (256, 3)),
        ((1600, 1200), (256, 256), "fill", (256, 256)),
        ((100, 80), (256, 128), "exact", (256, 128)),
    ],
)
def test_target_size(size, box, mode, expected):
    assert target_size(size, box, mode) == expected


# --------------------------------------------------------------------------------------------
# one image, in this process


def run_one(src, out, **steps):
    return process_one(Job(Steps(**steps)), Item(0, str(src), str(out)))


@pytest.mark.parametrize("tag", [3, 6, 8])
def test_exif_orientation_is_applied_and_dropped(tmp_path, tag):
    src = tmp_path / "o.jpg"
    save_oriented(marked((600, 400)), src, tag)
    out = tmp_path / "out.jpg"
    outcome = run_one(src, out, size=(300, 300))
    assert outcome.status == "done", outcome
    with Image.open(out) as img:
        assert img.size == (300, 200)  # upright: landscape again
        assert is_red(img.getpixel((5, 5)))  # the marker is back in the top-left corner
        assert not is_red(img.getpixel((img.width - 5, img.height - 5)))
        assert img.getexif().get(0x0112) is None


def test_jpeg_draft_fast_path_matches_full_decode(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    photo = Image.fromarray(pixels).resize((1600, 1200), Image.Resampling.BICUBIC)
    src = tmp_path / "p.jpg"
    photo.save(src, quality=92)
    out = tmp_path / "t.jpg"
    assert run_one(src, out, size=(256, 256)).status == "done"
    with Image.open(src) as full:
        reference = full.convert("RGB")
        reference.thumbnail((256, 256), reducing_gap=None)  # no shortcuts at all
    with Image.open(out) as fast:
        assert fast.size == reference.size == (256, 192)
        diff = np.abs(np.asarray(fast, np.int16) - np.asarray(reference, np.int16))
    assert diff.mean() < 3.0, diff.mean()


def test_resize_modes_and_conversions(tmp_path):
    src = tmp_path / "a.png"
    marked((400, 200)).save(src)
    cases = [
        (dict(size=(100, 100), resize="fit"), (100, 50), "RGB"),
        (dict(size=(100, 100), resize="fill"), (100, 100), "RGB"),
        (dict(size=(90, 30), resize="exact", mode="L"), (90, 30), "L"),
        (dict(size=(50, 50), mode="RGBA"), (50, 25), "RGBA"),
    ]
    for i, (steps, size, mode) in enumerate(cases):
        out = tmp_path / f"o{i}.png"
        assert run_one(src, out, **steps).status == "done"
        with Image.open(out) as img:
            assert (img.size, img.mode) == (size, mode), steps
    # fill crops the centre: the red corner of a 2:1 picture is cut away
    with Image.open(tmp_path / "o1.png") as img:
        assert not is_red(img.getpixel((2, 2)))


def test_alpha_is_laid_on_white_when_the_format_cannot_hold_it(tmp_path):
    src = tmp_path / "clear.png"
    img = marked((64, 64)).convert("RGBA")
    img.putalpha(0)
    img.save(src)
    out = tmp_path / "clear.jpg"
    assert run_one(src, out, format="JPEG").status == "done"
    with Image.open(out) as result:
        assert result.mode == "RGB"
        assert min(result.getpixel((32, 32))) > 245  # white, not the hidden colours


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("empty.jpg", lambda p: p.write_bytes(b""), "empty file"),
        ("text.jpg", lambda p: p.write_text("no"), "not an image"),
        ("bomb.png", png_bomb, "decompression bomb"),
    ],
)
def test_bad_inputs_are_reported_not_raised(tmp_path, name, make, reason):
    src = tmp_path / name
    make(src)
    outcome = run_one(src, tmp_path / ("out-" + name))
    assert outcome.status == "failed"
    assert reason in outcome.reason
    assert not (tmp_path / ("out-" + name)).exists()


def test_max_pixels_guard(tmp_path):
    src = tmp_path / "big.png"
    marked((200, 200)).save(src)
    outcome = run_one(src, tmp_path / "o.png", max_pixels=10_000)
    assert outcome.status == "failed"
    assert "200x200 = 40,000 pixels" in outcome.reason


# --------------------------------------------------------------------------------------------
# the whole job on worker processes


@pytest.mark.timeout(60)
def test_process_end_to_end(src, tmp_path):
    reasons = bad_files(src)
    before = tree_hash(src)
    dst = tmp_path / "dst"
    summary = allcores.images.process(src, dst, size=128, workers=2)

    assert summary.found == 9 + len(reasons)
    assert (summary.done, summary.skipped, summary.failed) == (9, 0, len(reasons))
    assert not summary.ok
    assert {f.path: f.reason for f in summary.failures}.keys() == reasons.keys()
    for failure in summary.failures:
        assert reasons[failure.path] in failure.reason, failure
    listed = json.loads((dst / allcores.images.FAILURES_FILE).read_text())
    assert [f["path"] for f in listed] == sorted(reasons)
    assert tree_hash(src) == before, "sources must never change"

    expected = {
        "cats/wide.jpg": ((128, 96), "RGB"),
        "cats/tall.png": ((77, 128), "RGB"),
        "dogs/turned.jpg": ((128, 85), "RGB"),
        "dogs/grey.jpg": ((128, 96), "L"),
        "dogs/deep/clear.png": ((128, 128), "RGBA"),
        "dogs/deep/pal.gif": ((120, 90), "P"),
        "small.webp": ((100, 80), "RGB"),
        "cats/scan.TIFF": ((128, 96), "RGB"),
        "cats/paint.bmp": ((128, 96), "RGB"),
    }
    for rel, (size, mode) in expected.items():
        with Image.open(dst / rel) as img:
            assert (img.size, img.mode) == (size, mode), rel
    with Image.open(dst / "dogs" / "turned.jpg") as img:
        assert is_red(img.getpixel((3, 3)))
    assert not (dst / "notes.txt").exists()
    assert leftovers(dst) == []


@pytest.mark.timeout(60)
def test_resume_skips_finished_work_and_redoes_changed_sources(src, tmp_path):
    dst = tmp_path / "dst"
    first = allcores.images.process(src, dst, size=64, workers=2)
    assert (first.done, first.skipped, first.failed) == (9, 0, 0)
    assert first.failures_file is None and not (dst / allcores.images.FAILURES_FILE).exists()

    again = allcores.images.process(src, dst, size=64, workers=2)
    assert (again.done, again.skipped) == (0, 9)

    edited = src / "cats" / "wide.jpg"
    out_time = os.stat(dst / "cats" / "wide.jpg").st_mtime_ns
    os.utime(edited, ns=(out_time + 10**9, out_time + 10**9))  # the source is now newer
    os.unlink(dst / "dogs" / "grey.jpg")
    third = allcores.images.process(src, dst, size=64, workers=2)
    assert (third.done, third.skipped) == (2, 7)

    # other steps make every old output stale
    bigger = allcores.images.process(src, dst, size=100, workers=2)
    assert (bigger.done, bigger.skipped) == (9, 0)
    with Image.open(dst / "cats" / "wide.jpg") as img:
        assert img.size == (100, 75)


@pytest.mark.timeout(60)
def test_format_conversion_renames_and_reports_name_clashes(src, tmp_path):
    marked((50, 50)).save(src / "cats" / "wide.png")  # clashes with wide.jpg as .jpg
    dst = tmp_path / "dst"
    summary = allcores.images.process(src, dst, size=64, format="jpeg", mode="RGB", workers=2)
    assert summary.failed == 1
    assert "same output name" in summary.failures[0].reason
    outputs = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.jpg"))
    assert outputs == sorted([
        "cats/wide.jpg", "cats/tall.jpg", "cats/scan.jpg", "cats/paint.jpg",
        "dogs/turned.jpg", "dogs/grey.jpg", "dogs/deep/clear.jpg", "dogs/deep/pal.jpg",
        "small.jpg",
    ])
    for path in dst.rglob("*.jpg"):
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB"


@pytest.mark.timeout(60)
def test_dst_inside_src_is_not_read_back(src):
    dst = src / "thumbs"
    first = allcores.images.process(src, dst, size=32, workers=2)
    again = allcores.images.process(src, dst, size=32, workers=2)
    assert first.found == again.found == 9
    assert (again.done, again.skipped) == (0, 9)
    assert not (dst / "thumbs").exists()


@pytest.mark.timeout(60)
def test_never_writes_through_a_link_out_of_dst(src, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dst = tmp_path / "dst"
    dst.mkdir()
    os.symlink(outside, dst / "cats")  # a planted link where an output folder goes
    summary = allcores.images.process(src, dst, size=32, workers=2)
    assert list(outside.iterdir()) == []
    failed = {f.path for f in summary.failures}
    assert failed == {"cats/wide.jpg", "cats/tall.png", "cats/scan.TIFF", "cats/paint.bmp"}
    assert all("outside DST" in f.reason for f in summary.failures)
    assert summary.done == 5


@pytest.mark.timeout(60)
def test_a_link_planted_at_an_output_name_is_replaced_not_followed(src, tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    dst = tmp_path / "dst"
    (dst / "dogs").mkdir(parents=True)
    os.symlink(victim, dst / "dogs" / "grey.jpg")
    summary = allcores.images.process(src, dst, size=32, workers=2)
    assert summary.ok and summary.done == 9  # a link is never taken for a finished output
    assert victim.read_text() == "keep me"
    assert not os.path.islink(dst / "dogs" / "grey.jpg")
    with Image.open(dst / "dogs" / "grey.jpg") as img:
        assert img.size == (32, 24)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_dataset_rows_labels_and_names(src, tmp_path, suffix):
    (src / "bad").mkdir()
    (src / "bad" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    dst = tmp_path / "dst"
    summary = allcores.images.process(
        src, dst, size=(48, 32), resize="fill", dataset="data" + suffix, workers=2
    )
    assert summary.failed == 1
    path = dst / ("data" + suffix)
    assert summary.dataset == str(path)
    if suffix == ".npz":
        with np.load(path) as z:
            images, names = z["images"], list(z["names"])
            labels, classes = list(z["labels"]), list(z["classes"])
    else:
        images = np.load(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        names, labels, classes = meta["names"], meta["labels"], meta["classes"]
    assert images.dtype == np.uint8 and images.shape == (9, 32, 48, 3)
    assert summary.dataset_shape == (9, 32, 48, 3)
    assert names == sorted(names) and "bad/broken.jpg" not in names
    assert classes == ["", "cats", "dogs"]
    assert [classes[i] for i in labels] == [n.split("/")[0] if "/" in n else "" for n in names]
    for row, name in enumerate(names):
        with Image.open(dst / name) as img:  # each row holds exactly its output's pixels
            expected = np.asarray(img.convert("RGBA" if img.mode == "P" else img.mode))
        if expected.ndim == 2:
            expected = np.repeat(expected[:, :, None], 3, axis=2)
        if expected.shape[2] == 4:
            continue  # alpha laid on white: checked by the alpha test
        assert np.array_equal(images[row], expected), name
    # a resumed run rebuilds the same array from the outputs on disk
    again = allcores.images.process(
        src, dst, size=(48, 32), resize="fill", dataset="data" + suffix, workers=2
    )
    assert again.skipped == 9
    reloaded = np.load(path)["images"] if suffix == ".npz" else np.load(path)
    assert np.array_equal(reloaded, images)
    assert leftovers(dst) == []


def test_dataset_needs_a_size_and_bad_options_say_what_to_do(src, tmp_path):
    with pytest.raises(ValueError, match="size"):
        allcores.images.process(src, tmp_path / "d", dataset="x.npy")
    with pytest.raises(ValueError, match="fit, fill, exact"):
        allcores.images.process(src, tmp_path / "d", size=8, resize="stretch")
    with pytest.raises(ValueError, match="must not be SRC"):
        allcores.images.process(src, src)
    with pytest.raises(FileNotFoundError):
        allcores.images.process(tmp_path / "nowhere", tmp_path / "d")


@pytest.mark.timeout(60)
def test_compare_serial_reports_a_speedup(src, tmp_path):
    summary = allcores.images.process(src, tmp_path / "d", size=64, workers=2,
                                      compare_serial=True)
    assert summary.serial_seconds is not None and summary.serial_seconds > 0
    assert summary.speedup is not None and summary.speedup > 0
    assert not (tmp_path / "d" / ".allcores-serial").exists()
    data = json.loads(summary.to_json())
    assert data["done"] == 9 and data["speedup"] == summary.speedup


@pytest.mark.timeout(60)
def test_samples_are_deterministic_and_varied(tmp_path):
    a = allcores.images.make_samples(tmp_path / "a", 20, seed=3, workers=2)
    b = allcores.images.make_samples(tmp_path / "b", 20, seed=3, workers=2)
    assert tree_hash(a) == tree_hash(b) and len(tree_hash(a)) == 20
    modes, tags, sizes = set(), set(), set()
    files = sorted(pathlib.Path(a).rglob("*.*"))
    assert len(files) == 20
    for path in files:
        with Image.open(path) as img:
            modes.add(img.mode)
            tags.add(img.getexif().get(0x0112))
            sizes.add(img.size)
    assert {"RGB", "L", "RGBA"} <= modes
    assert {3, 6, 8} & tags
    assert len(sizes) >= 3


def die_on_boom(job, item):
    """process_one, except that the worker process dies outright on files named boom."""
    if "boom" in os.path.basename(item.src):
        os._exit(3)
    return process_one(job, item)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [2, 1])
def test_a_worker_that_dies_fails_only_its_image(src, tmp_path, workers):
    """With one worker too: images never take the batch tools' one-core shortcut (running in
    this process), so a decoder that kills its process fails one image, not the caller."""
    from allcores.images import _discover, _run

    marked((50, 50)).save(src / "cats" / "boom.jpg")
    dst = tmp_path / "dst"
    dst.mkdir()
    found = _discover.discover(str(src), exclude=[])
    plan = _run._plan(found, str(src), str(dst), Steps(size=(32, 32)), with_rows=False)
    ran = _run._execute(Job(Steps(size=(32, 32))), plan, workers, False,
                        per_image=die_on_boom)
    assert [f.path for f in ran.failures] == ["cats/boom.jpg"]
    assert "worker process died" in ran.failures[0].reason
    assert "exited with status 3" in ran.failures[0].reason
    assert (ran.count(_run._DONE), ran.count(_run._FAILED)) == (9, 1)
    assert ran.stats.workers == workers and ran.stats.crashes >= 1


def odd_inputs(folder):
    """Small images in the modes real folders hold besides RGB."""
    a = (np.arange(40 * 60).reshape(40, 60) * 27 % 65535).astype(np.uint16)
    Image.fromarray(a).save(folder / "deep.png")  # I;16
    Image.new("CMYK", (60, 40), (10, 200, 30, 0)).save(folder / "print.jpg")
    Image.new("LA", (60, 40), (100, 128)).save(folder / "grey_alpha.png")
    Image.new("1", (60, 40), 1).save(folder / "bits.png")
    pal = Image.new("P", (60, 40), 3)
    pal.save(folder / "pal.gif", transparency=3)
    Image.new("F", (60, 40), 0.5).save(folder / "float.tif")
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("fmt", [None, "JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_mode_can_be_written_in_every_format(tmp_path, fmt):
    names = odd_inputs(tmp_path)
    for name in names:
        out = tmp_path / f"out-{name}.{(fmt or 'same').lower()}"
        outcome = run_one(tmp_path / name, out, size=(30, 30), format=fmt)
        assert outcome.status == "done", (name, outcome)
        with Image.open(out) as img:
            img.load()
            if fmt == "JPEG":
                assert img.mode in ("L", "RGB", "CMYK")
            if name == "deep.png" and fmt in (None, "PNG", "TIFF"):
                assert img.mode == "I;16"  # 16 bits stay 16 bits where the format allows
            if name == "float.tif" and fmt == "JPEG":
                assert img.getextrema() == (127, 127)  # 0.5 of white, not clipped to 0


def test_one_pixel_limit_with_one_message(tmp_path):
    src = tmp_path / "big.png"
    png_bomb(src, 3000, 3000)  # 9 Mpx: over 2x the limit, where Pillow would refuse it itself
    outcome = run_one(src, tmp_path / "o.png", max_pixels=1_000_000)
    assert outcome.status == "failed"
    assert "3000x3000 = 9,000,000 pixels, over the limit of 1,000,000" in outcome.reason
    assert Image.MAX_IMAGE_PIXELS == _steps.DEFAULT_MAX_PIXELS  # Pillow's limit put back


def test_a_killed_runs_dataset_file_is_swept(src, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=60)
    stale = dst / f".d.npy.{int(dead.stdout)}.tmp.npy"
    stale.write_bytes(b"x" * 100)
    summary = allcores.images.process(src, dst, size=16, dataset="d.npy", workers=2)
    assert summary.dataset_shape == (9, 16, 16, 3)
    assert not stale.exists()


@pytest.mark.timeout(60)
def test_force_redoes_everything_and_keeps_resume_trust(src, tmp_path):
    dst = tmp_path / "dst"
    allcores.images.process(src, dst, size=24, workers=2)
    forced = allcores.images.process(src, dst, size=24, workers=2, force=True)
    assert (forced.done, forced.skipped) == (9, 0)
    manifest = json.loads((dst / ".allcores-images.json").read_text())
    assert manifest == {"settings": {"size": [24, 24], "resize": "fit", "mode": None,
                                     "format": None, "quality": 85}, "resume": True}
