"""Ground truth for ``bench_toc.py``: what a TOC cube of the sandbox world must hold.

The values come from the world's model (``World.reflectance``, ``World.scl_truth``),
evaluated at the centres of the output grid's pixels; the cloud mask and the clear shares
are recomputed here from the true scene classification with plain numpy/scipy
arithmetic (the classes and the 40 m buffer that ``mask_clouds=True`` documents), never
taken from the package.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BANDS = ("B04", "B08")
MASK = "SCL"
#: SCL classes ``mask_clouds=True`` drops by default (README, issue 22): no data,
#: defective, cloud shadow, cloud medium/high probability, thin cirrus.
DROPPED = (0, 1, 3, 8, 9, 10)
#: Of those, the ones the buffer grows from: shadows, clouds, cirrus.
BUFFERED = (3, 8, 9, 10)
#: The default buffer of ``mask_clouds=True``, in metres.
DILATION_M = 40.0


@dataclass(frozen=True)
class Grid:
    """An output grid: EPSG code, affine transform (6 numbers) and ``(height, width)``."""

    epsg: int
    transform: tuple[float, ...]
    shape: tuple[int, int]

    @classmethod
    def from_json(cls, grid: dict) -> Grid:
        return cls(int(grid["epsg"]), tuple(grid["transform"][:6]), tuple(grid["shape"]))

    def centres(self) -> tuple[np.ndarray, np.ndarray, str]:
        """``xs`` (1, width), ``ys`` (height, 1) and the CRS, for the truth accessors."""
        a, _, c, _, e, f = self.transform
        height, width = self.shape
        x = c + a * (np.arange(width) + 0.5)
        y = f + e * (np.arange(height) + 0.5)
        return x[None, :], y[:, None], f"EPSG:{self.epsg}"


def truth_of(world: Any, item_id: str, grid: Grid) -> dict[str, np.ndarray]:
    """``{"B04": float64, "B08": float64, "SCL": uint8}`` of one item on the grid (NaN:
    no data, e.g. beyond a swath edge; SCL 0 there)."""
    xs, ys, crs = grid.centres()
    out = {band: world.reflectance(item_id, band, xs, ys, crs) for band in BANDS}
    out[MASK] = world.scl_truth(item_id, xs, ys, crs)
    return out


def truths(
    world: Any, item_ids: list[str], grid: Grid, workers: int = 2
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """``(index, truth_of(...))`` for every item, in order, ``workers`` computed at a time
    (and no more than ``2 * workers`` held)."""
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[tuple[int, Future]] = deque()
        for index, item_id in enumerate(item_ids):
            pending.append((index, pool.submit(truth_of, world, item_id, grid)))
            if len(pending) >= 2 * workers:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()


def dropped(scl: np.ndarray, resolution: float, dilation: float = DILATION_M) -> np.ndarray:
    """True where the default cloud mask drops a pixel of a ``(height, width)`` grid.

    A pixel is dropped when its class is in :data:`DROPPED`, or when its centre lies
    within ``dilation`` metres of the centre of a pixel of a :data:`BUFFERED` class on
    the same grid (a Euclidean distance transform, not the package's disk dilation).
    """
    from scipy import ndimage

    out = np.isin(scl, DROPPED)
    grow = np.isin(scl, BUFFERED)
    radius = dilation / resolution
    if grow.any() and radius >= 1:
        distance = ndimage.distance_transform_edt(~grow)
        out |= distance <= radius * (1 + 1e-9)
    return out


def clear_share(scl: np.ndarray) -> float:
    """Share of the grid's pixels whose class the mask keeps (no buffer), as
    ``min_clear`` defines it."""
    return float(1.0 - np.isin(scl, DROPPED).mean())


@dataclass
class Agreement:
    """Running comparison of one variable of a cube with the truth, date by date."""

    max_abs_diff: float = 0.0
    nan_mismatch: int = 0
    differing_pixels: int = 0
    pixels: int = 0
    compared: int = 0

    def add(self, got: np.ndarray, want: np.ndarray, tolerance: float = 1e-6) -> None:
        got = np.asarray(got, np.float64)
        want = np.asarray(want, np.float64)
        if got.shape != want.shape:
            raise ValueError(f"shape {got.shape} is not the truth's {want.shape}")
        nan_got, nan_want = np.isnan(got), np.isnan(want)
        both = ~nan_got & ~nan_want
        diff = np.abs(got[both] - want[both])
        if diff.size:
            self.max_abs_diff = max(self.max_abs_diff, float(diff.max()))
        mismatch = int((nan_got != nan_want).sum())
        self.nan_mismatch += mismatch
        self.differing_pixels += mismatch + int((diff > tolerance).sum())
        self.pixels += got.size
        self.compared += int(both.sum())

    def as_dict(self) -> dict:
        return {
            "max_abs_diff": self.max_abs_diff,
            "nan_mismatch": self.nan_mismatch,
            "differing_pixels": self.differing_pixels,
            "pixels": self.pixels,
            "values_compared": self.compared,
            "equal": self.differing_pixels == 0,
        }


def check_cubes(
    scenarios: dict,
    world: Any,
    expected: list[tuple[str, str]],
    grid: dict,
    checked: set[str],
    windows: dict[str, tuple[str, str]],
    min_clear: float,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """One pass over the dates of ``expected`` (``(date, item id)``): every kept cube of
    ``scenarios`` (a contender summary's ``cube_files`` and ``dates``) against the truth.

    A contender whose name starts with one of ``checked`` is compared; one with ``mask``
    in its name has its bands NaN where :func:`dropped` says. Each summary gains
    ``truth``: per variable an :class:`Agreement`, and the dates it lacks or has beyond
    those it should hold: the expected dates within the scenario's ``windows`` entry
    (``(first, last)``, all when absent), and for ``toc-minclear`` only those whose
    clear share reaches ``min_clear``.

    Returns
    -------
    shares : dict
        The clear share of every date (:func:`clear_share`).
    kept : dict
        ``~dropped(...)`` of the dates within ``windows["toc-mask"]``.
    """
    g = Grid.from_json(grid)
    resolution = abs(g.transform[0])
    checks: list[tuple[str, str, dict]] = []
    for name, sc in scenarios.items():
        for contender, summary in sc["contenders"].items():
            if contender.partition(".")[0] not in checked or not summary.get("cube_files"):
                continue
            if summary.get("grid") != grid:
                summary["truth"] = {"error": f"grid {summary.get('grid')} is not {grid}"}
                continue
            checks.append((name, contender, summary))
    arrays = [
        {Path(f).name.rsplit(".", 2)[-2]: np.load(f, mmap_mode="r") for f in s["cube_files"]}
        for _, _, s in checks
    ]
    agree = [{v: Agreement() for v in (*BANDS, MASK)} for _ in checks]
    mask_window = windows.get("toc-mask")
    shares: dict[str, float] = {}
    kept: dict[str, np.ndarray] = {}
    ids = [item_id for _, item_id in expected]
    print(f"\n== truth: {len(ids)} dates on grid {g.shape}", flush=True)
    for index, want in truths(world, ids, g):
        day = expected[index][0]
        shares[day] = clear_share(want[MASK])
        drop = dropped(want[MASK], resolution)
        if mask_window and mask_window[0] <= day <= mask_window[1]:
            kept[day] = ~drop
        for k, (_, contender, summary) in enumerate(checks):
            if day not in summary.get("dates", []):
                continue
            t = summary["dates"].index(day)
            for var, agreement in agree[k].items():
                expect = want[var]
                if "mask" in contender and var in BANDS:
                    expect = np.where(drop, np.nan, expect)
                agreement.add(arrays[k][var][t], expect)
    for k, (name, contender, summary) in enumerate(checks):
        first, last = windows.get(name, ("", "9999"))
        want_days = [d for d, _ in expected if first <= d <= last]
        if name == "toc-minclear":
            want_days = [d for d in want_days if shares[d] >= min_clear]
        dates = summary.get("dates", [])
        summary["truth"] = {
            **{var: a.as_dict() for var, a in agree[k].items()},
            "missing_dates": sorted(set(want_days) - set(dates)),
            "extra_dates": sorted(set(dates) - set(want_days)),
        }
        print(f"   {name:<13} {contender:<26} {truth_text(summary['truth'])}", flush=True)
    return shares, kept


def truth_text(t: dict) -> str:
    """One line of a contender's agreement with the truth."""
    if "error" in t:
        return str(t["error"])
    bands = max(t[b]["max_abs_diff"] for b in BANDS)
    nan = sum(t[b]["nan_mismatch"] for b in BANDS)
    return (
        f"max|diff| B04/B08 {bands:.2g}, NaN mismatches {nan}, SCL differing px "
        f"{t[MASK]['differing_pixels']}, missing dates {len(t['missing_dates'])}, "
        f"extra {len(t['extra_dates'])}"
    )
