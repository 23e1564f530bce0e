"""Safe on a shared machine (issue 11): limit()'s folder, environment variables, dependency
floors and the data tool's input. The shared-memory items are in test_security_shm.py, the
image tool's in test_security_images.py.

Tests that need a second user make files owned by ``nobody`` with ``os.chown``, which needs
root; as another user they skip, saying so.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import allcores
from allcores import data
from allcores.data import DataError
from allcores.errors import ForeignObjectError
from allcores.sync import _limit

pytestmark = pytest.mark.timeout(120)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="making a second user's files (os.chown to nobody) needs root"
)


def nobody() -> tuple[int, int]:
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def limit_home(tmp_path, monkeypatch):
    """limit() with its default folder under a private temporary directory."""
    import tempfile

    monkeypatch.delenv(_limit.LIMIT_DIR_ENV, raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


# --------------------------------------------------------------------------- item 4


@needs_root
def test_limit_refuses_a_folder_another_user_created_first(limit_home):
    planted = limit_home / f"allcores-{os.geteuid()}"
    planted.mkdir(mode=0o777)
    os.chmod(planted, 0o777)
    os.chown(planted, *nobody())
    with pytest.raises(ForeignObjectError, match="belongs to uid"):
        with allcores.limit("disk", 1):
            pass
    assert list(planted.iterdir()) == []  # nothing created in it


def test_limit_refuses_a_folder_others_may_write_in(limit_home):
    mine = limit_home / f"allcores-{os.geteuid()}"
    mine.mkdir()
    os.chmod(mine, 0o777)
    with pytest.raises(ForeignObjectError, match="other users may write"):
        allcores.limit("disk", 1).acquire()


def test_limit_folders_are_private_and_slot_files_never_follow_links(limit_home):
    with allcores.limit("disk", 1):
        pass
    folder = _limit._limit_dir("disk")
    for level in (folder, os.path.dirname(folder), os.path.dirname(os.path.dirname(folder))):
        assert os.stat(level).st_mode & 0o777 == 0o700
    victim = limit_home / "victim"
    os.unlink(os.path.join(folder, "slot-0"))
    os.symlink(victim, os.path.join(folder, "slot-0"))
    with pytest.raises(OSError):
        allcores.limit("disk", 1).acquire()
    assert not victim.exists()


def test_limit_prefers_xdg_runtime_dir(limit_home, monkeypatch):
    runtime = limit_home / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    with allcores.limit("disk", 1):
        pass
    assert _limit._limit_dir("disk").startswith(str(runtime / "allcores" / "limits") + "/")


def test_limit_release_survives_a_waiter_leaving_between_open_and_write(
    limit_home, monkeypatch
):
    """The BrokenPipeError once seen in test_limit_bounds_concurrency_across_processes: the
    releaser opened the wake FIFO while a waiter had it open; the waiter then found a free slot
    and closed it, and the releaser's write hit a FIFO without readers (EPIPE)."""
    lim = allcores.limit("race", 1)
    lim.acquire()
    wake = lim._path("wake")
    os.mkfifo(wake, 0o600)
    waiter = os.open(wake, os.O_RDONLY | os.O_NONBLOCK)
    real_open = os.open

    def open_then_the_waiter_leaves(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        if path == wake and flags & os.O_WRONLY:
            os.close(waiter)  # the waiter got its slot and is gone
        return fd

    monkeypatch.setattr(os, "open", open_then_the_waiter_leaves)
    lim.release()  # must not raise
    monkeypatch.undo()
    with allcores.limit("race", 1):  # and the slot is free
        pass


# --------------------------------------------------------------------------- item 11


def test_a_relative_limit_dir_is_refused_naming_the_variable(limit_home, monkeypatch):
    monkeypatch.setenv(_limit.LIMIT_DIR_ENV, "relative/limits")
    monkeypatch.chdir(limit_home)
    with pytest.raises(ValueError, match="ALLCORES_LIMIT_DIR.*absolute"):
        allcores.limit("disk", 1).acquire()
    assert not (limit_home / "relative").exists()


def test_an_absolute_limit_dir_is_used(limit_home, monkeypatch):
    chosen = limit_home / "mine"
    monkeypatch.setenv(_limit.LIMIT_DIR_ENV, str(chosen))
    with allcores.limit("disk", 1):
        pass
    assert _limit._limit_dir("disk").startswith(str(chosen) + "/")


def test_a_bad_start_method_variable_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv("ALLCORES_START_METHOD", "forq")
    with pytest.raises(ValueError, match="ALLCORES_START_METHOD='forq'"):
        allcores.Pool(1)


# --------------------------------------------------------------------------- item 6


def _floors(package: str) -> list[tuple[int, ...]]:
    """Every ``package>=X`` floor in pyproject.toml (tomllib is 3.11+; the suite runs on 3.10)."""
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    found = re.findall(rf'"{package}>=([0-9.]+)', text)
    assert found, f"no {package}>= floor in pyproject.toml"
    return [tuple(int(p) for p in v.split(".")) for v in found]


def test_dependency_floors_exclude_releases_with_known_code_execution_bugs():
    # CVE-2023-4863 (libwebp in Pillow < 10.0.1), CVE-2024-28219 (< 10.3.0), the advisories
    # fixed in 12.3.0; CVE-2023-47248 (pyarrow < 14.0.1), CVE-2026-25087 (15.0.0 - 23.0.0)
    assert min(_floors("pillow")) >= (12, 3)
    assert min(_floors("pyarrow")) >= (23, 0, 1)
    import PIL
    import pyarrow

    assert tuple(int(p) for p in PIL.__version__.split(".")[:2]) >= (12, 3)
    assert tuple(int(p) for p in pyarrow.__version__.split(".")[:3]) >= (23, 0, 1)


# --------------------------------------------------------------------------- item 10

HEADER = "customer_id,date,amount\n"


@pytest.mark.parametrize("columns", [None, ["amount"]])
def test_a_row_with_too_few_fields_is_an_error_not_nan(tmp_path, columns):
    path = tmp_path / "tx.csv"
    path.write_text(HEADER + "1,2024-01-01,5.0\n2,2024-01-02\n3,2024-01-03,7.5\n")
    with pytest.raises(DataError) as info:
        data.analyze(path, lambda df: df, columns=columns, workers=2)
    assert info.value.file == str(path) and info.value.line == 3
    assert "expected 3 fields" in str(info.value) and "found 2" in str(info.value)


def test_quoted_commas_are_still_fine(tmp_path):
    path = tmp_path / "tx.csv"
    path.write_text(HEADER + '1,2024-01-01,5.0\n"2,5",2024-01-02,1\n\n3,2024-01-03,7.5\n')
    frame = data.analyze(path, lambda df: df, workers=2)
    assert frame["customer_id"].astype(str).tolist() == ["1", "2,5", "3"]


def test_non_utf8_input_is_a_data_error_naming_the_line(tmp_path):
    path = tmp_path / "tx.csv"
    path.write_bytes(HEADER.encode() + b"1,2024-01-01,5.0\n2,caf\xe9,1\n")
    with pytest.raises(DataError) as info:
        data.analyze(path, lambda df: df, workers=2)
    assert info.value.line == 3 and "not UTF-8" in str(info.value)


def test_a_quoted_line_break_is_a_data_error_naming_the_line(tmp_path):
    path = tmp_path / "tx.csv"
    path.write_text(HEADER + '1,2024-01-01,5.0\n2,"2024-01\n-02",3\n3,2024-01-03,7.5\n')
    with pytest.raises(DataError) as info:
        data.analyze(path, lambda df: df, workers=2)
    assert info.value.file == str(path) and info.value.line == 3
    assert "line break" in str(info.value)


def test_the_cli_exits_1_for_non_utf8_input(tmp_path):
    path = tmp_path / "tx.csv"
    path.write_bytes(HEADER.encode() + b"1,2024-01-01,5.0\n2,2024-01-02,\xff\n")
    result = subprocess.run(
        [sys.executable, "-m", "allcores", "data", str(path), "--workers", "2"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"{path}, line 3: not UTF-8" in result.stderr


def test_apply_puts_the_current_folder_on_sys_path_for_its_own_import_only(
    tmp_path, monkeypatch
):
    (tmp_path / "mystats_sec.py").write_text("def rows(df):\n    return len(df)\n")
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    from allcores.data._plugin import load_function

    try:
        fn = load_function("mystats_sec:rows")
        assert sys.path == before
        assert str(tmp_path) not in sys.path
        assert fn([1, 2, 3]) == 3
    finally:
        sys.modules.pop("mystats_sec", None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.lists(st.integers(0, 99), min_size=1, max_size=5), min_size=1, max_size=30),
    partitions=st.integers(1, 4),
)
def test_every_row_of_the_wrong_width_is_found_wherever_the_cuts_fall(tmp_path, rows, partitions):
    """Whatever the widths and however the file is cut, reading either returns every row
    (all three fields each) or raises at the first row of another width, naming its line."""
    path = tmp_path / "rows.csv"
    path.write_text("a,b,c\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    bad = [i for i, r in enumerate(rows) if len(r) != 3]
    parts = data.plan(path, partitions)
    try:
        frames = [data.read_partition(p) for p in parts]
    except DataError as exc:
        assert bad, f"a good file was refused: {exc}"
        # partitions are read in file order: the first row of another width, by its line
        assert exc.line - 2 == bad[0]
        assert f"found {len(rows[exc.line - 2])}" in str(exc)
        return
    assert not bad, f"rows {bad} of the wrong width were read without an error"
    got = [list(t) for f in frames for t in f.itertuples(index=False)]
    assert got == rows


_plain = st.text("abc 12", max_size=4)
_quoted = st.text('ab,"\n', max_size=5).map(lambda t: '"' + t.replace('"', '""') + '"')


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.lists(st.one_of(_plain, _quoted), min_size=3, max_size=3),  # mostly rows of the width
    st.lists(st.one_of(_plain, _quoted), min_size=1, max_size=4),
), max_size=8))
def test_the_fast_row_check_agrees_with_the_csv_module(rows):
    """The numpy check that clears legal files must never clear a file the exact (csv module)
    check refuses: too many or too few fields, or a quoted line break."""
    from allcores.data import _partition

    text = "".join(",".join(r) + "\n" for r in rows).encode()
    part = _partition.Partition(str(__file__), 0, "csv", ("a", "b", "c"), 0, 0)
    exact_ok = _partition._first_bad_row(part, text) is None if text else True
    if _partition._rows_look_right(text, 3):
        assert exact_ok
