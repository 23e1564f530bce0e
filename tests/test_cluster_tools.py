"""The batch tools on real clusters: ``allcores images``, ``simulate`` and ``data`` with
``--backend``, run on the module's local Dask cluster and local Ray, give what the same command
gives on this machine's processes.

The local reference runs as a user would run it (a subprocess); the cluster run is the same
command line through ``allcores.cli.main`` in this process, so it reaches the module's cluster
(Dask by ``--address``, Ray through the connection this process holds) and the test can see
that the items really ran there (the cluster pool's run statistics).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import allcores
import allcores.backends
from _cluster import dask_cluster, ray_cluster
from allcores.cli import main

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", params=["dask", "ray"])
def backend_args(request):
    """The command-line options that point a command at the module's cluster."""
    if request.param == "dask":
        for client in dask_cluster():
            yield ["--backend", "dask", "--address", client.scheduler.address]
    else:
        for _ray in ray_cluster():
            yield ["--backend", "ray"]


def _local(*args) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "allcores", *map(str, args)],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    return run


def _items_run_on_clusters() -> int:
    """Items the cluster pools of this process have run (their engines' run statistics)."""
    from allcores import _oneliners

    return sum(pool._engine.statistics().items for pool in _oneliners._cluster_pools.values())


def _on_cluster(capsys, backend_args, *args) -> str:
    before = _items_run_on_clusters()
    capsys.readouterr()
    assert main([*map(str, args), *backend_args]) == 0
    out = capsys.readouterr().out
    assert _items_run_on_clusters() > before, "the command did not run on the cluster"
    # The command connected by address as a user's would: close that connection (its client
    # and IO thread) as the command's process would at exit; the module's cluster stays up.
    allcores.shutdown()
    allcores.backends.close_all()
    return out


def _without_timing(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("seconds", "stats", "workers", "output")}


def test_images_on_a_cluster_writes_the_same_files(capsys, backend_args, tmp_path):
    src = tmp_path / "src"
    allcores.images.make_samples(src, 12, seed=3, workers=1)
    common = ["--size", "48", "--format", "png", "--json"]
    _local("images", src, tmp_path / "local", *common, "--workers", "2")
    out = json.loads(_on_cluster(capsys, backend_args, "images", src, tmp_path / "cluster",
                                 *common))
    assert out["done"] == 12 and out["failed"] == 0
    local = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.png"))
    there = sorted(p.relative_to(tmp_path / "cluster")
                   for p in (tmp_path / "cluster").rglob("*.png"))
    assert local == there and len(local) == 12
    for rel in local:
        assert (tmp_path / "local" / rel).read_bytes() == (tmp_path / "cluster" / rel).read_bytes()


def test_simulate_on_a_cluster_gives_the_same_estimate(capsys, backend_args):
    args = ["simulate", "pi", "--samples", "2e6", "--seed", "5", "--json"]
    local = json.loads(_local(*args, "--workers", "2").stdout)
    there = json.loads(_on_cluster(capsys, backend_args, *args))
    assert there["estimate"] == local["estimate"] and there["samples"] == local["samples"]
    assert there["stderr"] == local["stderr"]


def test_data_on_a_cluster_gives_the_same_table(capsys, backend_args, tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "tx.csv"
    allcores.data.write_sample(path, 60_000)
    local_out, cluster_out = tmp_path / "local.parquet", tmp_path / "cluster.parquet"
    local = json.loads(_local("data", path, "--workers", "2", "--json", "-o", local_out).stdout)
    there = json.loads(_on_cluster(capsys, backend_args, "data", path, "--json", "-o",
                                   cluster_out))
    assert _without_timing(there) == _without_timing(local)
    assert Path(cluster_out).exists()
    pd.testing.assert_frame_equal(pd.read_parquet(cluster_out), pd.read_parquet(local_out))


def test_one_item_runs_on_the_cluster_too(capsys, backend_args, tmp_path):
    """The batch tools' one-core shortcut (one item: run it here) is for this machine's
    processes; with --backend the user asked for the cluster, so even one partition goes
    there (this machine may not be the one with the memory or the data)."""
    path = tmp_path / "small.csv"
    allcores.data.write_sample(path, 500)
    local = json.loads(_local("data", path, "--json").stdout)
    there = json.loads(_on_cluster(capsys, backend_args, "data", path, "--json"))
    assert there["partitions"] == 1
    assert _without_timing(there) == _without_timing(local)
