"""``allcores images`` and ``allcores demo`` as users run them: subprocesses, real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from PIL import Image

import allcores.images
from allcores.images import _steps
from allcores.images._samples import sample_name

SAMPLES = 40


def cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "allcores", *map(str, args)],
        capture_output=True, text=True, timeout=90, **kwargs,
    )


def temps(folder):
    return [
        os.path.join(root, n)
        for root, _, files in os.walk(folder)
        for n in files
        if n.endswith(_steps.TEMP_SUFFIX) or n.endswith(".tmp.npy")
    ]


def outputs(folder):
    return sorted(
        os.path.relpath(os.path.join(root, n), folder)
        for root, dirs, files in os.walk(folder)
        for n in files
        if not n.startswith(".") and n.endswith((".jpg", ".png"))
    )


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("samples") / "src"
    allcores.images.make_samples(folder, SAMPLES, seed=7, workers=2)
    return folder


def test_help_shows_usage_and_examples():
    result = cli("images", "--help")
    assert result.returncode == 0
    assert "allcores images [options] SRC DST" in result.stdout
    assert "--size 256" in result.stdout and "--dataset" in result.stdout
    top = cli("--help")
    assert "images" in top.stdout and "demo" in top.stdout


def test_usage_errors_exit_2_with_a_hint(tmp_path):
    one_path = cli("images", tmp_path)
    assert one_path.returncode == 2 and "give SRC and DST" in one_path.stderr
    bad = cli("images", tmp_path / "nowhere", tmp_path / "out", "--size", "0")
    assert bad.returncode == 2 and "size" in bad.stderr


def test_missing_pillow_prints_the_install_hint(tmp_path):
    code = (
        "import sys; sys.modules['PIL'] = None\n"
        "from allcores.cli import main\n"
        f"sys.exit(main(['images', {str(tmp_path)!r}, {str(tmp_path / 'o')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert "pip install 'allcores[images]'" in result.stderr


@pytest.mark.timeout(90)
def test_run_with_a_corrupt_file_reports_it_and_exits_1(samples, tmp_path):
    src = tmp_path / "src"
    (src / "birds").mkdir(parents=True)
    for i in (0, 9, 3):  # a colour JPEG, a PNG with alpha, a greyscale JPEG
        name = sample_name(i)
        (src / "birds" / name.replace("/", "_")).write_bytes((samples / name).read_bytes())
    data = (samples / sample_name(0)).read_bytes()
    (src / "birds" / "broken.jpg").write_bytes(data[:2000])
    dst = tmp_path / "dst"
    result = cli("images", src, dst, "--size", "64", "--json", "--workers", "2")
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["done"], summary["failed"]) == (3, 1)
    assert summary["failures"][0]["path"] == "birds/broken.jpg"
    assert "truncated" in summary["failures"][0]["reason"]
    listed = json.loads((dst / "allcores-failures.json").read_text())
    assert listed == summary["failures"]
    with Image.open(dst / "birds" / sample_name(9).replace("/", "_")) as img:
        assert img.mode == "RGBA" and max(img.size) == 64
    with Image.open(dst / "birds" / sample_name(3).replace("/", "_")) as img:
        assert img.mode == "L" and max(img.size) == 64


@pytest.mark.timeout(90)
def test_sample_run_then_dataset(tmp_path):
    dst = tmp_path / "demo"
    result = cli("images", "--sample", 12, dst, "--size", "32x24", "--resize", "fill",
                 "--dataset", "d.npz", "--json", "--workers", "2")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["found"], summary["done"], summary["failed"]) == (12, 12, 0)
    assert summary["dataset_shape"] == [12, 24, 32, 3]
    assert len(outputs(dst / "_samples")) == 12
    for rel in outputs(dst):
        if rel.startswith("_samples"):
            continue
        with Image.open(dst / rel) as img:
            assert img.size == (32, 24)
    again = cli("images", "--sample", 12, dst, "--size", "32x24", "--resize", "fill", "--json")
    assert json.loads(again.stdout)["skipped"] == 12


@pytest.mark.timeout(120)
def test_interrupted_run_leaves_no_partial_files_and_resumes(samples, tmp_path):
    dst = tmp_path / "dst"
    # PNG output on one worker: slow enough per image that Ctrl-C lands in the middle
    proc = subprocess.Popen(
        [sys.executable, "-m", "allcores", "images", str(samples), str(dst),
         "--size", "400", "--format", "png", "--dataset", "d.npy", "--progress",
         "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    seen = b""
    progress = 0
    while progress < 2:
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, f"the run ended before it could be interrupted: {seen[-500:]!r}"
        seen += chunk
        counts = [int(n) for n in re.findall(rb"(\d+)/%d" % SAMPLES, seen)]
        progress = max(counts, default=0)
    assert progress < SAMPLES, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"interrupted" in err

    assert temps(dst) == []
    finished = outputs(dst)
    assert 0 < len(finished) < SAMPLES
    for rel in finished:  # every file there is whole
        with Image.open(dst / rel) as img:
            img.load()

    assert not (dst / "d.npy").exists()  # the half-filled dataset was thrown away
    result = cli("images", samples, dst, "--size", "400", "--format", "png", "--json",
                 "--dataset", "d.npy", "--workers", "2")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["skipped"] == len(finished)
    assert summary["done"] == SAMPLES - len(finished)
    assert len(outputs(dst)) == SAMPLES
    assert temps(dst) == []
    assert summary["dataset_shape"] == [SAMPLES, 400, 400, 3]
    assert len(json.loads((dst / "d.json").read_text())["names"]) == SAMPLES


@pytest.mark.timeout(120)
def test_demo_command(tmp_path):
    result = cli("demo", "--images", 8, "--out", tmp_path / "demo", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "8 done" in result.stdout and "speedup" in result.stdout
    assert (tmp_path / "demo" / "dataset.npz").is_file()
    report = tmp_path / "demo" / "report.html"  # beside the outputs, its path printed last
    assert result.stdout.strip().splitlines()[-1] == f"  report: {report}"
    assert "allcores run report" in report.read_text()


def test_the_command_line_imports_pillow_only_when_an_image_command_runs():
    code = (
        "import sys, allcores.cli\n"
        "allcores.cli._build_parser()\n"
        "print(sorted(m for m in ('PIL', 'numpy', 'tqdm') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
