"""The resumable parcel batch (:mod:`xarray_terrascope.analysis.batch` and
``xarray-terrascope zonal --out-dir``) on the sandbox and a real LocalCluster: a run
killed with SIGKILL or interrupted with SIGINT in a subprocess, then rerun, gives the
output of an uninterrupted run; changed arguments and foreign folders are refused; the
statistics match the world's truth."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import xarray_terrascope as xts
from xarray_terrascope import cli
from xarray_terrascope.analysis.batch import BatchProgress, run_zonal_batch
from xarray_terrascope.analysis.batch_output import MANIFEST
from xarray_terrascope.cli.batch_progress import ProgressBar
from xarray_terrascope.exceptions import BatchOutputError

pytestmark = pytest.mark.slow

WINDOW = {"start": "2025-06-01", "end": "2025-06-15"}
STATS = ["mean", "count", "valid_fraction"]
N_PARCELS, BATCH = 600, 100
PARTS = N_PARCELS // BATCH
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def parcels_path(terrascope_sandbox, tmp_path_factory):
    """600 neighbouring parcels of UTM zone 31 (a strip from lon 5.3 eastwards, by west edge) as
    GeoParquet, so the cube is on the files' own grid."""
    parcels = terrascope_sandbox.parcels()
    lon = parcels.geometry.bounds["minx"]
    strip = parcels[lon > 5.3].assign(lon=lon).sort_values("lon").head(N_PARCELS)
    path = tmp_path_factory.mktemp("batch") / "parcels.parquet"
    strip.drop(columns="lon").to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def reference(terrascope_sandbox, parcels_path, cluster, tmp_path_factory):
    """An uninterrupted run of the library on the module's LocalCluster."""
    from distributed import Client

    out = tmp_path_factory.mktemp("batch") / "reference"
    saved = {k: os.environ.get(k) for k in _ENDPOINTS}
    os.environ.update({k: terrascope_sandbox.env[k] for k in _ENDPOINTS})
    seen: list[BatchProgress] = []
    try:
        xts.login(terrascope_sandbox.username, terrascope_sandbox.password)
        with Client(cluster) as client:
            result = run_zonal_batch(
                parcels_path,
                out,
                **WINDOW,
                stats=STATS,
                batch_size=BATCH,
                client=client,
                progress=seen.append,
            )
    finally:
        xts.logout()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert (result.partitions, result.written, result.skipped) == (PARTS, PARTS, 0)
    assert [p.parcels_done for p in seen] == [BATCH * k for k in range(PARTS + 1)]
    return out


_ENDPOINTS = ("TERRASCOPE_STAC_URL", "TERRASCOPE_DOWNLOAD_URL", "TERRASCOPE_DOWNLOAD_HOSTS")


def _env(sandbox, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment: the sandbox's endpoints, credentials in a netrc file only."""
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {sandbox.username} password {sandbox.password}\n")
    netrc.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERRASCOPE_")}
    env.update({k: sandbox.env[k] for k in _ENDPOINTS})
    env.update(
        NETRC=str(netrc),
        TERRASCOPE_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    )
    return env


def _argv(parcels_path: Path, out: Path, *extra: str) -> list[str]:
    return [
        "zonal",
        "--parcels",
        str(parcels_path),
        "--start",
        WINDOW["start"],
        "--end",
        WINDOW["end"],
        "--stats",
        ",".join(STATS),
        "--out-dir",
        str(out),
        "--batch-size",
        str(BATCH),
        *extra,
    ]


def _start_cli(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """The CLI in a process group of its own (its LocalCluster's workers included)."""
    with log.open("w") as stream:
        return subprocess.Popen(
            [sys.executable, "-m", "xarray_terrascope.cli", *argv],
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _rerun(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """The same command again, to its end; it must succeed."""
    rerun = subprocess.run(
        [sys.executable, "-m", "xarray_terrascope.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return rerun


def _parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("part-*.parquet"))


def _wait_for_parts(
    proc: subprocess.Popen, folder: Path, log: Path, deadline_s: float, count: int = 1
) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if folder.exists() and len(_parts(folder)) >= count:
            return
        assert proc.poll() is None, f"the CLI ended early:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no partition within {deadline_s} s:\n{log.read_text()[-3000:]}")


def _end_group(proc: subprocess.Popen) -> None:
    """Kill what is left of the CLI's process group (its worker processes), by its id."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_as_reference(folder: Path, reference: Path) -> None:
    import geopandas

    assert _parts(folder) == _parts(reference) == [f"part-{k:05d}.parquet" for k in range(PARTS)]
    for name in _parts(reference):
        got = geopandas.read_parquet(folder / name)
        want = geopandas.read_parquet(reference / name)
        pd.testing.assert_frame_equal(got, want, check_exact=True)
        assert _digest(folder / name) == _digest(reference / name), name
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def _resume_after(sig: int, terrascope_sandbox, parcels_path, reference, tmp_path) -> str:
    out = tmp_path / "out"
    env = _env(terrascope_sandbox, tmp_path)
    # (a smaller tile store than the default: output identical all the same)
    argv = _argv(
        parcels_path, out, "--workers", "2", "--threads-per-worker", "1", "--tile-store-mb", "64"
    )
    log = tmp_path / "first.log"
    proc = _start_cli([*argv, "--max-in-flight", "1"], env, log)
    try:
        _wait_for_parts(proc, out, log, deadline_s=240)
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=120)
    finally:
        _end_group(proc)
    before = {name: (out / name).stat().st_ino for name in _parts(out)}
    assert 1 <= len(before) < PARTS, "the run was to be stopped half way"
    rerun = _rerun(argv, env)
    assert f"wrote {PARTS - len(before)} partition(s) of {PARTS}" in rerun.stdout
    assert f"({len(before)} found done;" in rerun.stdout
    assert "parcels/s" in rerun.stderr  # the progress lines (not a tty: plain lines)
    # the partitions written before the stop were kept, not written again
    assert {n: (out / n).stat().st_ino for n in before} == before
    _same_as_reference(out, reference)
    return f"{code}\n{log.read_text()}"


def test_resumes_after_sigkill_with_identical_output(
    terrascope_sandbox, parcels_path, reference, tmp_path
):
    code, _ = _resume_after(
        signal.SIGKILL, terrascope_sandbox, parcels_path, reference, tmp_path
    ).split("\n", 1)
    assert code == str(-signal.SIGKILL)


def test_resumes_after_ctrl_c_with_identical_output(
    terrascope_sandbox, parcels_path, reference, tmp_path
):
    code, log = _resume_after(
        signal.SIGINT, terrascope_sandbox, parcels_path, reference, tmp_path
    ).split("\n", 1)
    assert code == "130", log[-3000:]
    assert "interrupted: the partitions written so far stay in" in log
    assert "Traceback" not in log
    # without -v, the cluster's own life is not told (before: distributed's INFO lines)
    assert "INFO distributed" not in log, log[-3000:]


def test_means_match_the_worlds_truth(terrascope_sandbox, reference):
    import geopandas

    table = pd.concat(geopandas.read_parquet(reference / n) for n in _parts(reference))
    assert len(table) == N_PARCELS * table["date"].nunique() and table["date"].nunique() > 3
    assert table["parcel_id"].nunique() == N_PARCELS
    world = terrascope_sandbox.world
    # the truth is cloud-free NDVI; hazy cloud edges (not masked) change it: the dates
    # without any cloud only
    clear_days = {pd.Timestamp(a.datetime.date()) for a in world.acquisitions if not a.cloudy}
    clear = table[table["date"].isin(clear_days) & (table["valid_fraction"] == 1.0)]
    # (a few parcels on the clip edge of a tile lack pixels there)
    assert clear["date"].nunique() == 2 and len(clear) > 1.9 * N_PARCELS
    truth = np.concatenate(
        [world.parcel_ndvi(g["parcel_id"].to_numpy(), day) for day, g in clear.groupby("date")]
    )
    got = np.concatenate([g["mean"].to_numpy() for _, g in clear.groupby("date")])
    # files hold 8-bit DN (0.004 NDVI per step): the mean is within half a step
    np.testing.assert_allclose(got, truth, atol=0.0021)
    cloudy = table[table["count"] == 0]
    assert len(cloudy) and cloudy["mean"].isna().all()


def test_a_changed_argument_is_refused(terrascope_sandbox, parcels_path, reference, logged_in):
    before = {n: _digest(reference / n) for n in [*_parts(reference), MANIFEST]}
    cases = [
        ({"stats": ["mean"]}, "stats"),
        ({"end": "2025-06-20"}, "end"),
        ({"batch_size": 50}, "batch_size"),
    ]
    for change, argument in cases:
        kwargs = {**WINDOW, "stats": STATS, "batch_size": BATCH, **change}
        with pytest.raises(BatchOutputError) as err:
            run_zonal_batch(parcels_path, reference, **kwargs)
        assert err.value.argument == argument
        message = str(err.value)
        assert argument in message and "new or empty folder" in message
    # a changed parcel file is refused too
    import geopandas

    fewer = geopandas.read_parquet(parcels_path).iloc[1:]
    with pytest.raises(BatchOutputError) as err:
        run_zonal_batch(fewer, reference, **WINDOW, stats=STATS, batch_size=BATCH)
    assert err.value.argument == "parcels"
    # ... and nothing was written
    assert {n: _digest(reference / n) for n in [*_parts(reference), MANIFEST]} == before


def test_cli_refuses_a_changed_argument_in_one_line(
    parcels_path, reference, terrascope_env, capsys
):
    argv = _argv(parcels_path, reference)
    argv[argv.index("--stats") + 1] = "mean"
    try:
        assert cli.main(argv) == 2
    finally:
        xts.logout()
    err = capsys.readouterr().err
    assert err.startswith("error: out_dir:") and "stats" in err and err.count("\n") == 1, err


def test_a_foreign_folder_is_refused(parcels_path, logged_in, tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "part-00000.parquet").write_bytes(b"not ours")
    with pytest.raises(BatchOutputError) as err:
        run_zonal_batch(parcels_path, folder, **WINDOW, stats=STATS, batch_size=BATCH)
    assert err.value.argument is None
    assert MANIFEST in str(err.value) and "new or empty folder" in str(err.value)
    assert (folder / "part-00000.parquet").read_bytes() == b"not ours"
    (folder / MANIFEST).write_text('{"format": "something-else"}')
    with pytest.raises(BatchOutputError, match="something-else"):
        run_zonal_batch(parcels_path, folder, **WINDOW, stats=STATS, batch_size=BATCH)


def _largest_mean(stats):
    """A post-step: each parcel's largest mean NDVI over the dates."""
    frame = stats["NDVI"].sel(zonal_statistics="mean").max("time").to_dataframe()
    return frame.reset_index()[["parcel_id", "NDVI"]].rename(columns={"NDVI": "max_mean"})


def _worker_view(stats):
    """A post-step: what a post-step sees of each parcel (the area of the geometry
    coordinate), whether its worker runs distributed's statistical profiler, and the
    worker process's glibc trim threshold (the environment its Nanny gave it)."""
    import os

    from distributed import get_worker

    profiling = "profile" in get_worker().periodic_callbacks
    areas = [g.area for g in stats["geometry"].values]
    ids = stats["parcel_id"].values
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_", "")
    return pd.DataFrame({"parcel_id": ids, "area": areas, "profiling": profiling, "trim": trim})


def test_post_steps_run_per_partition(parcels_path, reference, cluster, logged_in, tmp_path):
    """Post-steps write under ``_steps/``; the folder reads as one dataset of the
    statistics (pyarrow skips ``_`` names), even with a text attribute that one
    partition has only missing values of (an arrow ``null`` column there before)."""
    import geopandas
    from distributed import Client

    from xarray_terrascope.analysis.batch import _hilbert_order

    noted = geopandas.read_parquet(parcels_path)
    noted["note"] = None  # but for one parcel of the last batch (the first is all None)
    last = noted.index[_hilbert_order(noted)[-1]]
    noted.loc[last, "note"] = "checked"
    noted_path = tmp_path / "noted.parquet"
    noted.to_parquet(noted_path, index=False)
    try:
        with Client(cluster) as client:
            result = run_zonal_batch(
                noted_path,
                tmp_path / "steps",
                **WINDOW,
                stats=STATS,
                batch_size=300,
                client=client,
                post_steps={"peak": _largest_mean, "view": _worker_view},
            )
    finally:
        xts.logout()
    assert result.written == 2
    # the post-steps get the geometry coordinate (the client gets the statistics without
    # it), and a cluster the caller gave keeps its profiler
    viewed = tmp_path / "steps" / "_steps" / "view"
    view = pd.concat(pd.read_parquet(viewed / n) for n in _parts(viewed))
    parcels = geopandas.read_parquet(parcels_path).set_index("parcel_id")
    assert view["profiling"].all()
    np.testing.assert_allclose(
        view.set_index("parcel_id")["area"].sort_index(), parcels.area.sort_index()
    )
    steps = tmp_path / "steps" / "_steps" / "peak"
    assert _parts(steps) == ["part-00000.parquet", "part-00001.parquet"]
    peaks = pd.read_parquet(steps)
    table = pd.concat(geopandas.read_parquet(reference / n) for n in _parts(reference))
    expected = table.groupby("parcel_id")["mean"].max()
    assert len(peaks) == N_PARCELS
    np.testing.assert_allclose(
        peaks.set_index("parcel_id")["max_mean"].sort_index(), expected.sort_index()
    )
    # the whole folder as the guide reads it: the statistics' rows only, every note kept
    whole = pd.read_parquet(tmp_path / "steps")
    assert list(whole.columns[:5]) == ["parcel_id", "crop", "area_ha", "note", "date"]
    assert len(whole) == len(table)
    notes = whole.groupby("parcel_id")["note"].first()
    assert notes.notna().sum() == 1 and notes[noted.loc[last, "parcel_id"]] == "checked"
    np.testing.assert_allclose(
        whole.set_index(["parcel_id", "date"])["mean"].sort_index(),
        table.set_index(["parcel_id", "date"])["mean"].sort_index(),
    )


def _has_stealing(dask_scheduler=None) -> bool:
    return "stealing" in dask_scheduler.extensions


def _scheduler_view(stats):
    """A post-step: whether the scheduler of the worker running it has work stealing."""
    from distributed import get_client

    stealing = get_client().run_on_scheduler(_has_stealing)
    return pd.DataFrame({"parcel_id": stats["parcel_id"].values, "stealing": stealing})


def test_own_cluster_runs_without_the_profiler(
    parcels_path, reference, logged_in, tmp_path, monkeypatch
):
    """The LocalCluster run_zonal_batch starts itself has distributed's statistical
    profiler off (its stack sampling cost the worker CPU the threaded scheduler does not
    spend), its scheduler no work stealing (which moved a batch waiting on one worker
    to the other, in the middle of the first's run of batches: both then read its
    tiles), and its workers glibc's own malloc thresholds (distributed's Nanny sets
    ``MALLOC_TRIM_THRESHOLD_=65536``, which also fixes the mmap threshold at 128 KiB: a
    worker spent 1.2-1.27x the threaded scheduler's CPU per parcel); the output is the
    reference run's.

    A Nanny writes the variable into its own process's environment, which the next
    workers inherit: the test starts from an environment without it, as a fresh process
    does (an earlier test's cluster may have set it here)."""
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    out = tmp_path / "own"
    try:
        result = run_zonal_batch(
            parcels_path,
            out,
            **WINDOW,
            stats=STATS,
            batch_size=BATCH,
            n_workers=1,
            threads_per_worker=1,
            post_steps={"view": _worker_view, "scheduler": _scheduler_view},
        )
    finally:
        xts.logout()
    assert result.written == PARTS
    view = pd.read_parquet(out / "_steps" / "view")
    assert len(view) == N_PARCELS and not view["profiling"].any()
    assert (view["trim"] == "").all()
    scheduler = pd.read_parquet(out / "_steps" / "scheduler")
    assert len(scheduler) == N_PARCELS and not scheduler["stealing"].any()
    _same_as_reference(out, reference)


def _tile_fetches(sandbox, records) -> dict[tuple[str, int, int], int]:
    """How many requests of ``records`` fetched each full-resolution tile of each COG
    (its ``TileOffsets`` read from the sandbox's file on disk), headers left out."""
    import rasterio

    offsets: dict[str, list[tuple[int, int, int]]] = {}
    fetches: dict[tuple[str, int, int], int] = {}
    for r in records:
        if not r.path.endswith(".tif") or not r.range or r.range.startswith("bytes=0-"):
            continue
        name = r.path.rsplit("/", 1)[-1]
        if name not in offsets:
            with rasterio.open(sandbox.world.cog_path(name.removesuffix(".tif"))) as src:
                th, tw = src.block_shapes[0]
                offsets[name] = [
                    (int(src.get_tag_item(f"BLOCK_OFFSET_{c}_{row}", "TIFF", bidx=1)), row, c)
                    for row in range(-(-src.height // th))
                    for c in range(-(-src.width // tw))
                ]
        for part in r.range.removeprefix("bytes=").split(","):
            start, _, end = part.strip().partition("-")
            for offset, row, col in offsets[name]:
                if int(start) <= offset <= int(end):
                    key = (name, row, col)
                    fetches[key] = fetches.get(key, 0) + 1
    return fetches


@pytest.mark.parametrize("tile_cache_mb", [None, 1])
def test_a_worker_fetches_each_tile_once_across_its_batches(
    logged_in, tmp_path, monkeypatch, tile_cache_mb
):
    """One worker process doing every batch, in the Hilbert order: neighbouring batches
    share tiles (their windows overlap), and the worker keeps what a batch fetched for
    the next, so the sandbox's log shows no tile fetched twice (before, a tile inside one
    batch's window was not kept, and a later batch fetched it again: 7 of 180 tiles for
    these 1500 parcels in batches of 300). Also with the ``tile_cache_mb`` option at 1
    MiB (16 tiles; as the 64 MiB default for a whole season's batch): the batch's
    ``tile_store_mb`` keeps them."""
    from distributed import Client, LocalCluster

    if tile_cache_mb is not None:  # inherited by the worker process
        monkeypatch.setenv("TERRASCOPE_TILE_CACHE_MB", str(tile_cache_mb))
    sandbox = logged_in
    parcels = sandbox.parcels()
    lon = parcels.geometry.bounds["minx"]
    strip = parcels[lon > 5.3].assign(lon=lon).sort_values("lon").head(1500)
    out = tmp_path / "out"
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as local,
        Client(local) as client,
    ):
        sandbox.log.clear()
        result = run_zonal_batch(
            strip.drop(columns="lon"), out, **WINDOW, stats=STATS, batch_size=300, client=client
        )
    assert result.written == 5
    fetches = _tile_fetches(sandbox, sandbox.log.records())
    assert len(fetches) > 50, "hardly any tile fetched: the test proves nothing"
    again = {tile: n for tile, n in fetches.items() if n > 1}
    assert not again, f"{len(again)} of {len(fetches)} tiles fetched more than once: {again}"


def test_two_workers_fetch_each_tile_once_across_the_cluster(logged_in, tmp_path, monkeypatch):
    """2 single-threaded workers: each takes half of the dates for every batch, so a file
    is read by one worker only and no tile is fetched twice across the cluster (before,
    each worker took a contiguous run of the batches for all dates, and both fetched the
    tiles along their runs' boundary: 54 of 180 tiles for these 1500 parcels). The
    batch's own LocalCluster, as a user gets it. Windows are read 2 dates at a time (as
    a season's are 8 at a time), so a worker reads its 3 dates' windows in two reads, in
    order: its read-ahead must not go on into the other worker's dates."""
    from xarray_terrascope.analysis import zonal_tasks

    monkeypatch.setattr(zonal_tasks, "STEP_GROUP", 2)  # the graph is built here
    sandbox = logged_in
    parcels = sandbox.parcels()
    lon = parcels.geometry.bounds["minx"]
    strip = parcels[lon > 5.3].assign(lon=lon).sort_values("lon").head(1500)
    sandbox.log.clear()
    result = run_zonal_batch(
        strip.drop(columns="lon"),
        tmp_path / "out",
        **WINDOW,
        stats=STATS,
        batch_size=300,
        n_workers=2,
        threads_per_worker=1,
    )
    assert result.written == 5 and result.dates >= 2
    fetches = _tile_fetches(sandbox, sandbox.log.records())
    assert len(fetches) > 50, "hardly any tile fetched: the test proves nothing"
    again = {tile: n for tile, n in fetches.items() if n > 1}
    assert not again, (
        f"{len(again)} of {len(fetches)} tiles fetched more than once "
        f"({result.rebalanced} unit(s) taken from the other worker's run): {again}"
    )


def test_progress_text():
    p = BatchProgress(300, 1000, 3, 10, 100, 20.0)
    assert p.rate == 10.0 and p.eta_s == 70.0
    import io

    stream = io.StringIO()
    ProgressBar(stream)(p)
    assert stream.getvalue() == (
        "[#########.....................] 300/1000 parcels (3/10 partitions), "
        "10.0 parcels/s, 1m10s left\n"
    )


def test_each_header_is_requested_once_per_cluster(
    logged_in, parcels_path, reference, tmp_path, monkeypatch
):
    """A fresh LocalCluster of 2 workers, each with its own empty header cache and no disk
    cache (as workers on two machines): the client fetches every file's header once and
    ships them to the workers, so the sandbox's log shows each file's header requested
    at most once across the cluster, and the output is the reference's."""
    from distributed import Client, LocalCluster

    monkeypatch.setenv("TERRASCOPE_HEADER_CACHE", "0")  # inherited by the worker processes
    sandbox = logged_in
    out = tmp_path / "out"
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as local,
        Client(local) as client,
    ):
        sandbox.log.clear()
        result = run_zonal_batch(
            parcels_path, out, **WINDOW, stats=STATS, batch_size=BATCH, client=client
        )
        ran_on = client.run(lambda: os.getpid())
    assert result.written == PARTS and len(ran_on) == 2
    records = [r for r in sandbox.log.records() if r.path.endswith(".tif")]
    header_requests: dict[str, int] = {}
    for r in records:
        if r.range and r.range.startswith("bytes=0-"):
            header_requests[r.path] = header_requests.get(r.path, 0) + 1
    read_files = {r.path for r in records}
    assert header_requests, "no header was requested at all: the test proves nothing"
    twice = {path: n for path, n in header_requests.items() if n > 1}
    assert not twice, f"headers requested more than once across the cluster: {twice}"
    assert set(header_requests) == read_files  # every file read had its header fetched
    _same_as_reference(out, reference)


def _worker_processes(proc: subprocess.Popen, log: Path, count: int, deadline_s: float) -> list:
    """The dask worker processes of the CLI's LocalCluster, found by the process tree: the
    CLI process holds the scheduler and the Nannies; each Nanny's worker is a child
    process of it listening on a TCP port (multiprocessing's resource tracker, the other
    child, listens on none)."""
    import psutil

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the CLI ended early:\n{log.read_text()[-3000:]}"
        found = []
        for child in psutil.Process(proc.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if any(c.status == psutil.CONN_LISTEN for c in child.net_connections("tcp")):
                    found.append(child)
        if len(found) == count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not {count} worker processes within {deadline_s} s")


def _kill_workers(sandbox, argv: list[str], env: dict[str, str], log: Path, count: int = 1) -> int:
    """Run the CLI, SIGKILL ``count`` of its 2 worker processes once two partitions are
    written, and return the CLI's exit code.

    The sandbox answers each request after 0.3 s for the run, so a batch takes seconds:
    with 2 batches in flight per worker, each worker is still computing one when the
    second partition is written (without it a worker could have finished its batches
    while the client wrote, and its death would cost no running task)."""
    latency = sandbox.download.latency
    sandbox.download.latency = 0.3
    proc = _start_cli(argv, env, log)
    try:
        out = Path(argv[argv.index("--out-dir") + 1])
        _wait_for_parts(proc, out, log, deadline_s=240, count=2)
        for victim in _worker_processes(proc, log, 2, deadline_s=30)[:count]:
            os.kill(victim.pid, signal.SIGKILL)
        return proc.wait(timeout=300)
    finally:
        sandbox.download.latency = latency
        _end_group(proc)


def test_a_killed_worker_is_replaced_with_identical_output(
    terrascope_sandbox, parcels_path, reference, tmp_path
):
    """One worker process of the CLI's LocalCluster killed half way: its Nanny starts a
    new one, distributed computes the dead worker's batches again (when it had any: it
    may have finished its batches just then), the run ends by itself with the
    reference's output and says that it lost a worker."""
    out = tmp_path / "out"
    argv = _argv(parcels_path, out, "--workers", "2", "--threads-per-worker", "1")
    log = tmp_path / "run.log"
    code = _kill_workers(terrascope_sandbox, argv, _env(terrascope_sandbox, tmp_path), log)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    # the package's own WARNING (shown without -v), then the summary
    died = [line for line in text.splitlines() if "xarray_terrascope" in line and "died" in line]
    assert len(died) == 1 and died[0].startswith("WARNING"), text[-3000:]
    assert f"wrote {PARTS} partition(s) of {PARTS}" in text
    assert "1 worker(s) lost" in text
    _same_as_reference(out, reference)


def test_a_run_whose_workers_all_die_at_once_completes_with_identical_output(
    terrascope_sandbox, parcels_path, reference, tmp_path
):
    """Both worker processes killed at once (a single worker's death is the same): the
    COG headers the client scattered to the workers are gone with them, and distributed
    cancels the batches that need them; the run scatters the headers again (from the
    client's copy), submits the cancelled batches again and ends with the reference's
    output."""
    out = tmp_path / "out"
    argv = _argv(parcels_path, out, "--workers", "2", "--threads-per-worker", "1")
    log = tmp_path / "run.log"
    code = _kill_workers(terrascope_sandbox, argv, _env(terrascope_sandbox, tmp_path), log, 2)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert "the cluster lost the shared COG headers with its workers; sent again" in text
    assert "2 worker(s) lost" in text
    _same_as_reference(out, reference)


def test_a_batch_whose_workers_die_too_often_fails_in_one_line_and_resumes(
    terrascope_sandbox, parcels_path, reference, tmp_path
):
    """With ``distributed.scheduler.allowed-failures`` 0, a dead worker fails the batches
    it was computing (distributed's KilledWorker): the CLI ends with exit 2 and one line
    naming the partition and how to resume, no traceback; the same command then
    completes the run with the reference's output. Both workers are killed: when the
    second partition is written, the batch the client sent after the first is still
    being computed, by one of them (a single worker could be idle, its batches done)."""
    out = tmp_path / "out"
    env = _env(terrascope_sandbox, tmp_path)
    argv = _argv(parcels_path, out, "--workers", "2", "--threads-per-worker", "1")
    log = tmp_path / "run.log"
    strict = {**env, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    code = _kill_workers(terrascope_sandbox, argv, strict, log, count=2)
    text = log.read_text()
    assert code == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text[-3000:]
    assert "could not be computed" in errors[0] and "allowed-failures is 0" in errors[0]
    assert "run the same command again to resume" in errors[0]
    before = {name: (out / name).stat().st_ino for name in _parts(out)}
    assert 1 <= len(before) < PARTS
    rerun = _rerun(argv, env)
    assert f"({len(before)} found done;" in rerun.stdout
    assert {n: (out / n).stat().st_ino for n in before} == before
    _same_as_reference(out, reference)


def _wait_for_subscription(client, got: list) -> None:
    """Until the scheduler sends the client's events of topic ``all`` (``got`` holds what
    the client's handler received): the subscription travels on the client's batched
    stream, an event on a request of its own, and an event that comes first reaches no
    one, so a probe is sent again until one arrives."""
    deadline = time.monotonic() + 30
    while not any(m[1].get("action") == "probe" for m in got):
        assert time.monotonic() < deadline, "no event of topic 'all' came within 30 s"
        client.log_event("all", {"action": "probe"})
        time.sleep(0.1)


def test_worker_watch_follows_the_schedulers_events_and_keeps_the_callers_handler(cluster, caplog):
    """:class:`WorkerWatch` on a client of the module's LocalCluster: a worker's removal,
    as the scheduler publishes it (the event is sent with ``Client.log_event``, so no
    worker of the shared cluster dies), is logged as a WARNING naming the partitions and
    queued for the batch's loop; a handler the caller had on the topic is called too and
    is set back at the end."""
    from distributed import Client

    from xarray_terrascope.analysis.batch_workers import WorkerWatch

    mine: list = []
    caplog.set_level("INFO", logger="xarray_terrascope.analysis.batch")
    with Client(cluster) as client:
        client.subscribe_topic("all", mine.append)
        _wait_for_subscription(client, mine)
        keys = {"task-a": 3, "task-b": 7}
        with WorkerWatch(client, keys.get) as watch:
            client.log_event(
                "all",
                {
                    "action": "remove-worker",
                    "worker": "tcp://127.0.0.1:1",
                    "processing-tasks": ["task-b", "other"],
                    "lost-computed-tasks": ["task-a"],
                    "expected": False,
                },
            )
            client.log_event("all", {"action": "add-worker", "worker": "tcp://127.0.0.1:2"})
            deadline = time.monotonic() + 30
            while len(watch.changes) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert list(watch.changes) == [
            ("left", "tcp://127.0.0.1:1"),
            ("joined", "tcp://127.0.0.1:2"),
        ]
        assert watch.lost == 1
        client.log_event("all", {"action": "after"})
        deadline = time.monotonic() + 30
        while not any(m[1].get("action") == "after" for m in mine) and time.monotonic() < deadline:
            time.sleep(0.05)
        client.unsubscribe_topic("all")
    told = ("tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
    assert [m[1]["action"] for m in mine if m[1].get("worker") in told] == [
        "remove-worker",
        "add-worker",
    ]
    assert any(m[1].get("action") == "after" for m in mine)  # the caller's handler is back
    warnings = [
        r
        for r in caplog.records
        if r.name.startswith("xarray_terrascope") and r.levelname == "WARNING"
    ]
    assert len(warnings) == 1
    assert "tcp://127.0.0.1:1" in warnings[0].getMessage()
    assert "(3, 7)" in warnings[0].getMessage()


@pytest.mark.parametrize("value", [-1, 1.5, True, "256"])
def test_a_bad_tile_store_size_is_refused_before_any_work(value, tmp_path):
    import geopandas
    import shapely

    from xarray_terrascope.exceptions import InvalidArgumentError

    parcels = geopandas.GeoDataFrame(
        {"parcel_id": [1]}, geometry=[shapely.box(5.0, 51.2, 5.01, 51.21)], crs="EPSG:4326"
    )
    with pytest.raises(InvalidArgumentError, match="tile_store_mb"):
        run_zonal_batch(parcels, tmp_path / "out", tile_store_mb=value)
    assert not (tmp_path / "out").exists()


def test_a_folder_left_with_only_a_manifests_temporary_file_is_used(tmp_path):
    """A run killed while it wrote its manifest leaves only the temporary file: the
    folder is still the run's to start, the temporary file removed."""
    from xarray_terrascope.analysis import batch_output

    leftover = tmp_path / f"{batch_output._TMP_PREFIX}{batch_output.MANIFEST}.4242.beef"
    leftover.write_text("{")
    batch_output.check_or_create(tmp_path, {"stats": ["mean"]}, {})
    assert (tmp_path / batch_output.MANIFEST).exists() and not leftover.exists()


@pytest.mark.parametrize("address", ["tcp://127.0.0.1", "foo://x:1"])
def test_a_malformed_scheduler_address_is_an_argument_error_and_leaves_no_client(address):
    """Refused before a ``Client`` is made: distributed's, failing on such an address,
    would stay the process's default client, and every later ``compute`` wait for it."""
    import dask.array

    from xarray_terrascope.analysis.batch_cluster import cluster_client
    from xarray_terrascope.exceptions import InvalidArgumentError

    with (
        pytest.raises(InvalidArgumentError, match="not a dask scheduler address"),
        cluster_client(address, None, None),
    ):
        pass
    assert dask.config.get("scheduler", None) is None
    assert dask.array.ones(3).sum().compute() == 3
