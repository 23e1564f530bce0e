"""The HTML run report, opened in a real browser (headless Chromium driven by Selenium).

``make test`` installs Debian's chromium and chromium-driver when it runs as root (CI does);
elsewhere these tests skip with a message saying how to install them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import _tasks
import allcores
from allcores import _stats
from allcores._engine.recording import Span
from allcores._report import REPORT_MAX_SPANS

pytestmark = pytest.mark.timeout(180)

# Installed where `make test` put them (Debian's package names).
_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
_DRIVER_NAMES = ("chromedriver",)
_INSTALL = (
    "the report's browser tests need Chromium and its driver: run `make test` as root (it "
    "installs them), or `apt-get install -y chromium chromium-driver`"
)
# Installed before anything runs in the page: collects uncaught errors and rejections.
_ERROR_HOOK = """
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message)));
window.addEventListener('unhandledrejection', e => window.__errors.push(String(e.reason)));
"""
# Resolves once Bokeh has embedded the document and drawn it.
_WAIT_IDLE = """
const done = arguments[arguments.length - 1];
const doc = window.Bokeh && Bokeh.documents[0];
if (!doc) { done('no Bokeh document'); return; }
if (doc.is_idle) { done(null); } else { doc.idle.connect(() => done(null)); }
"""
# A bound for the opening time far above the ~1 s we measure (the machine is shared): the test
# reports the figure; it would catch a report that hangs, not a slow CI.
_GENEROUS_OPEN_SECONDS = 20.0


def _which(names: tuple[str, ...]) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


@pytest.fixture
def browser():
    """One browser per test: Chromium starts a process per page, which the leak check (rightly)
    counts against the test that opened it, so each test quits its own."""
    chromium, driver_path = _which(_CHROMIUM_NAMES), _which(_DRIVER_NAMES)
    if chromium is None or driver_path is None:
        pytest.skip(_INSTALL)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1200"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(60)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _ERROR_HOOK})
    yield driver
    driver.quit()


def _open(driver, path: Path) -> dict:
    """Load the report, wait until Bokeh has drawn it, and say what happened on the way."""
    driver.get_log("performance")  # drop what earlier pages logged
    driver.get_log("browser")
    started = time.monotonic()
    driver.get(path.resolve().as_uri())
    problem = driver.execute_async_script(_WAIT_IDLE)
    opened = time.monotonic() - started
    assert problem is None, problem
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    navigation = driver.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return [n.domContentLoadedEventEnd, n.loadEventEnd];"
    )
    return {
        "errors": driver.execute_script("return window.__errors"),
        "severe": [e for e in driver.get_log("browser") if e["level"] == "SEVERE"],
        "requests": requests,
        "opened_seconds": opened,
        "load_event_ms": navigation[1],
    }


def _model(driver, name: str, expression: str):
    return driver.execute_script(
        f"const m = Bokeh.documents[0].get_model_by_name({json.dumps(name)});"
        f"return m === null ? null : {expression};"
    )


def _check_clean(page: dict, path: Path) -> None:
    assert page["errors"] == [], page["errors"]
    assert page["severe"] == [], page["severe"]
    # Only the file itself and inline data: no CDN, no fonts, nothing from a network.
    outside = [u for u in page["requests"] if not u.startswith(("file:", "data:", "blob:"))]
    assert outside == [], outside
    assert path.resolve().as_uri() in page["requests"]
    print(f"\n{path.name}: load event at {page['load_event_ms']:.0f} ms, drawn after "
          f"{page['opened_seconds']:.2f} s, {path.stat().st_size / 1e6:.2f} MB")
    assert page["opened_seconds"] < _GENEROUS_OPEN_SECONDS


def _summary(driver) -> dict[str, str]:
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#summary tr')]"
        ".map(r => [r.querySelector('th').textContent, r.querySelector('td').textContent]);"
    )
    return dict(rows)


def test_report_of_a_map_opens_cleanly_with_a_lane_per_worker(browser, tmp_path):
    path = tmp_path / "run.html"
    results = allcores.map(_tasks.spin, [30_000] * 60, workers=2, report=path)
    stats = results.stats
    page = _open(browser, path)
    _check_clean(page, path)
    lanes = _model(browser, "timeline", "m.y_range.factors")
    assert sorted(lanes) == ["worker 0", "worker 1"]
    bars = _model(browser, "chunks", "[...m.data_source.data.lane]")
    assert sorted(set(bars)) == ["worker 0", "worker 1"]  # both lanes hold chunks
    assert len(bars) == stats.chunks
    figures = _summary(browser)
    assert figures["Items"] == "60"
    assert figures["Workers"] == "2"
    assert figures["Chunks"] == f"{stats.chunks:,}"
    assert figures["Crashes"] == "0"
    verdict = browser.find_element("id", "verdict").text
    assert verdict == stats.verdict()
    assert "60 items ran" in verdict
    worker_rows = browser.execute_script("return document.querySelectorAll('#workers tr').length")
    assert worker_rows == 1 + 2


def test_report_marks_crashes_and_recycled_workers(browser, tmp_path):
    path = tmp_path / "pool.html"
    with allcores.Pool(3, maxtasksperchild=10, report=path) as pool:
        out = pool.map(_tasks.exit_on, range(60), on_error="collect")
        assert isinstance(out[37], allcores.WorkerCrashedError)
        stats = pool.statistics()
    assert path.exists()  # written when the `with` block terminated the pool
    page = _open(browser, path)
    _check_clean(page, path)
    assert sorted(_model(browser, "timeline", "m.y_range.factors")) == [
        "worker 0", "worker 1", "worker 2"]
    crashes = _model(browser, "crash", "[...m.data_source.data.detail]")
    assert crashes is not None and len(crashes) == stats.crashes >= 1
    assert any("item 37" in d or "re-run" in d for d in crashes)
    recycled = _model(browser, "recycle", "m.data_source.data.detail.length")
    assert recycled == stats.recycled >= 1
    figures = _summary(browser)
    assert figures["Crashes"] == str(stats.crashes)
    assert figures["Recycled workers"] == str(stats.recycled)


def _synthetic(chunks: int, workers: int = 2) -> allcores.RunStats:
    """A 200,000-chunk run as the manager would have recorded it (no processes needed)."""
    spans = []
    per_lane = chunks // workers
    for w in range(workers):
        for i in range(per_lane):
            start = 100.0 + i * 1e-4
            spans.append(Span(w, 1, start, start + 9e-5, 1, 9e-5, 2e-6, 3e-6, 1, 30 << 20))
    return _stats._build("call", "tiny", workers, 100.0 - 0.01, 100.0 + per_lane * 1e-4 + 0.01,
                         spans, [], 0.1, ((1, "tiny"),))


def test_a_200k_chunk_report_is_merged_small_and_opens_quickly(browser, tmp_path):
    stats = _synthetic(200_000)
    assert stats.chunks == 200_000
    path = allcores.report(stats, tmp_path / "big.html")
    assert path.stat().st_size < 4_000_000
    page = _open(browser, path)
    _check_clean(page, path)
    drawn = _model(browser, "chunks", "m.data_source.data.lane.length")
    assert drawn <= REPORT_MAX_SPANS + 2
    chunks = _model(browser, "chunks", "[...m.data_source.data.chunks].reduce((a, b) => a + b)")
    assert chunks == 200_000  # merged, none lost
    assert "merged" in browser.find_element("class name", "note").text
    assert _summary(browser)["Chunks"] == "200,000"


def test_report_refuses_what_it_cannot_write(tmp_path):
    stats = allcores.map(abs, range(10), workers=2).stats
    with pytest.raises(TypeError, match="RunStats"):
        allcores.report([1, 2, 3], tmp_path / "x.html")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        allcores.report(stats, tmp_path / "missing" / "x.html")
    with pytest.raises(IsADirectoryError):
        allcores.report(stats, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_pool_report_is_written_at_join(tmp_path):
    path = tmp_path / "joined.html"
    pool = allcores.Pool(2, report=path)
    pool.map(abs, range(100))
    assert not path.exists()
    pool.close()
    pool.join()
    text = path.read_text()
    assert "allcores run report" in text
    assert "<script src=" not in text and "<link" not in text  # everything inline


def test_imap_report_is_written_when_the_iteration_ends(tmp_path):
    path = tmp_path / "imap.html"
    assert sum(allcores.imap(abs, range(50), workers=2, report=path)) == sum(range(50))
    assert "allcores run report" in path.read_text()


def test_a_bad_report_path_fails_before_the_map_runs(tmp_path):
    ran = tmp_path / "ran"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        allcores.map(os.mkdir, [str(ran)], workers=2, report=tmp_path / "missing" / "r.html")
    assert not ran.exists()  # the task never ran
    with pytest.raises(FileNotFoundError, match="does not exist"):
        allcores.Pool(2, report=tmp_path / "missing" / "pool.html")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "allcores", *args], capture_output=True,
                          text=True, timeout=150, cwd=cwd)


@pytest.mark.parametrize("tool", ["images", "data", "simulate"])
def test_each_cli_tool_writes_a_report_that_opens(browser, tmp_path, tool):
    """`--report` on the three batch tools: a clean page, one lane per worker, the figures of
    the run as `--json` reports them."""
    report = tmp_path / f"{tool}.html"
    if tool == "images":
        args = ["images", "--sample", "16", str(tmp_path / "out"), "--size", "32"]
    elif tool == "data":
        sample = _cli("data", str(tmp_path / "t.csv"), "--sample", "20000", cwd=tmp_path)
        assert sample.returncode == 0, sample.stderr
        args = ["data", str(tmp_path / "t.csv"), "--partitions", "4"]
    else:
        args = ["simulate", "pi", "--samples", "2e6", "--seed", "1"]
    run = _cli(*args, "--workers", "2", "--json", "--report", str(report), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    stats = json.loads(run.stdout)["stats"]
    assert stats["workers"] == 2 and stats["items"] >= 2
    page = _open(browser, report)
    _check_clean(page, report)
    assert sorted(_model(browser, "timeline", "m.y_range.factors")) == ["worker 0", "worker 1"]
    figures = _summary(browser)
    assert figures["Items"] == f"{stats['items']:,}"
    assert figures["Workers"] == "2"
    assert browser.find_element("id", "verdict").text == stats["verdict"]
