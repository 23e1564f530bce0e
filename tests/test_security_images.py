"""allcores images against hostile input and planted files (issue 11, items 5, 7, 8 and 9).

Each test builds the situation an attacker (or an unlucky earlier run) leaves behind, runs the
real tool on real worker processes, and checks what is on disk afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import allcores.images
from allcores.images import _discover, _run
from allcores.images._steps import Item, Job, Steps, process_one

pytestmark = pytest.mark.timeout(120)


def photo(path, size=(64, 48), colour=(30, 120, 200)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


# --------------------------------------------------------------------------- item 5


@pytest.mark.parametrize("fmt", ["PPM", "TGA", "PCX", "ICO"])
def test_a_format_outside_the_allow_list_is_refused_whatever_the_extension(tmp_path, fmt):
    """Pillow reads these by content; a file named .png must still be a PNG (or one of the
    documented formats) to be decoded at all."""
    src = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(src, fmt)
    outcome = process_one(Job(Steps(size=(16, 16))), Item(0, str(src), str(tmp_path / "o.png")))
    assert outcome.status == "failed"
    assert outcome.reason.startswith("not an image in a format allcores images reads")
    assert not (tmp_path / "o.png").exists()


def test_an_eps_file_named_jpg_never_reaches_ghostscript(tmp_path):
    src = tmp_path / "src"
    eps = src / "photo.jpg"
    src.mkdir()
    eps.write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
        b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
    )
    summary = allcores.images.process(src, tmp_path / "dst", size=8, workers=2)
    (failure,) = summary.failures
    assert failure.error == "UnidentifiedImageError"
    assert "not an image in a format allcores images reads" in failure.reason


# --------------------------------------------------------------------------- item 7


def test_outputs_no_manifest_vouches_for_are_redone_not_trusted(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(4):
        photo(src / "cats" / f"{i}.png", size=(80, 60))
    first = allcores.images.process(src, dst, size=32, workers=2)
    assert first.done == 4
    os.unlink(dst / _run.MANIFEST_FILE)  # lost, or the outputs came from somewhere else

    second = allcores.images.process(src, dst, size=16, dataset="d.npy", workers=2)
    assert second.skipped == 0 and second.done == 4
    for i in range(4):
        with Image.open(dst / "cats" / f"{i}.png") as img:
            assert img.size == (16, 12)
    rows = np.load(dst / "d.npy")
    assert rows.shape == (4, 16, 16, 3)
    # fit-mode rows are centred on black: a row cropped from a 32-pixel output has no border
    assert (rows[:, :2] == 0).all() and (rows[:, -2:] == 0).all()


def test_an_output_of_the_wrong_size_is_redone_even_when_the_manifest_matches(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    photo(src / "a.png", size=(80, 60))
    allcores.images.process(src, dst, size=16, workers=2)
    Image.new("RGB", (32, 24)).save(dst / "a.png")  # newer than the source, wrong size
    again = allcores.images.process(src, dst, size=16, workers=2)
    assert again.skipped == 0 and again.done == 1
    with Image.open(dst / "a.png") as img:
        assert img.size == (16, 12)


def test_an_interrupted_run_without_manifest_still_resumes_its_own_outputs(tmp_path):
    """The manifest of a first run vouches for what that run wrote (since its start), so a
    re-run skips them; what was in DST before it is redone."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(3):
        photo(src / f"{i}.png", size=(80, 60))
    dst.mkdir()
    Image.new("RGB", (16, 12)).save(dst / "0.png")  # right size, but from an unknown run
    steps = _run._check_options(16, "fit", None, None, 85, 10**8)
    trusted, since = _run._vouch(str(dst / _run.MANIFEST_FILE), steps.settings())
    assert not trusted and since > 0
    # the "interrupted" run made image 1 only
    process_one(Job(steps, since_ns=since), Item(0, str(src / "1.png"), str(dst / "1.png")))
    summary = allcores.images.process(src, dst, size=16, workers=2)
    assert (summary.done, summary.skipped) == (2, 1)  # 0 and 2 done, 1 skipped
    manifest = json.loads((dst / _run.MANIFEST_FILE).read_text())
    assert manifest["resume"] is True


# --------------------------------------------------------------------------- item 8


def test_planted_links_at_temporary_names_are_never_written_through(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    photo(src / "a.png")
    (src / "bad.png").write_bytes(b"not an image")  # so a failures file is written too
    dst.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    pid = os.getpid()
    planted = [
        f"{_run.MANIFEST_FILE}.tmp",
        f"{_run.MANIFEST_FILE}.{pid}.tmp",
        f"{_run.FAILURES_FILE}.tmp",
        f"{_run.FAILURES_FILE}.{pid}.tmp",
        f".d.npy.{pid}.tmp.npy",
        "d.json.tmp",
    ]
    for name in planted:
        os.symlink(victim, dst / name)
    summary = allcores.images.process(src, dst, size=16, dataset="d.npy", workers=2)
    assert summary.done == 1 and summary.failed == 1
    assert victim.read_text() == "precious"
    assert np.load(dst / "d.npy").shape == (1, 16, 16, 3)


@pytest.mark.parametrize("where", ["../outside.npy", "sub/../../outside.npz", "ABS"])
def test_a_dataset_path_outside_dst_is_refused(tmp_path, where):
    src, dst = tmp_path / "src", tmp_path / "dst"
    photo(src / "a.png")
    if where == "ABS":
        where = str(tmp_path / "outside.npy")
    with pytest.raises(ValueError, match="outside DST"):
        allcores.images.process(src, dst, size=16, dataset=where, workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_a_dataset_folder_that_links_out_of_dst_is_refused(tmp_path):
    src, dst, elsewhere = tmp_path / "src", tmp_path / "dst", tmp_path / "elsewhere"
    photo(src / "a.png")
    dst.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, dst / "sets")
    with pytest.raises(ValueError, match="leading outside DST"):
        allcores.images.process(src, dst, size=16, dataset="sets/d.npy", workers=2)
    assert list(elsewhere.iterdir()) == []


def test_a_dataset_inside_dst_given_as_an_absolute_path_is_fine(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    photo(src / "a.png")
    summary = allcores.images.process(
        src, dst, size=16, dataset=str(dst / "sets" / "d.npz"), workers=2
    )
    assert summary.dataset_shape == (1, 16, 16, 3)


def test_the_cli_refuses_a_dataset_outside_dst_with_exit_2(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    photo(src / "a.png")
    result = subprocess.run(
        [sys.executable, "-m", "allcores", "images", str(src), str(dst), "--size", "16",
         "--dataset", "../x.npy", "--workers", "2"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "outside DST" in result.stderr
    assert not (tmp_path / "x.npy").exists()


# --------------------------------------------------------------------------- item 9


def test_links_leaving_src_are_refused_and_reported_unless_followed(tmp_path):
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    photo(src / "inside.png")
    photo(outside / "secret.png")
    os.symlink(outside / "secret.png", src / "outside.png")
    os.symlink(src / "inside.png", src / "alias.png")  # a link within SRC is fine

    summary = allcores.images.process(src, dst, size=16, workers=2)
    assert summary.done == 2
    (failure,) = summary.failures
    assert failure.path == "outside.png"
    assert failure.reason == _discover.OUTSIDE_LINK
    assert not (dst / "outside.png").exists()

    followed = allcores.images.process(src, dst, size=16, workers=2, follow_links=True)
    assert followed.failed == 0 and (dst / "outside.png").exists()


def test_the_temp_sweep_spares_files_of_live_processes(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    photo(src / "a.png")
    dst.mkdir()
    live = subprocess.Popen(["sleep", "600"])  # stands for another run's worker
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        busy = dst / f".b.png.{live.pid}.allcores-tmp"
        stale = dst / f".c.png.{dead.pid}.allcores-tmp"
        busy.write_bytes(b"another run's image in progress")
        stale.write_bytes(b"left by a killed run")
        allcores.images.process(src, dst, size=16, workers=2)
        assert busy.exists()
        assert not stale.exists()
    finally:
        live.kill()
        live.wait(timeout=30)
