"""The table that ``bench_toc.py`` prints and keeps in ``results/toc.json``."""

from __future__ import annotations

from _toc_truth import BANDS
from bench_read import _fmt_bytes


def _x(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def table(report: dict) -> str:
    fb = _fmt_bytes
    lines = []
    check = report.get("server_check")
    if check:
        lines += [
            f"server check: {check['concurrent_requests']} concurrent range GETs in "
            f"{check['wall_s']:.3f} s = {check['latency_periods']} x the "
            f"{check['latency_s'] * 1000:.0f} ms latency; over open connections "
            f"{check['keepalive']['wall_s']:.3f} s; with no added latency "
            f"{check['no_latency']['wall_s']:.3f} s",
            "",
        ]
    head = (
        f"{'scenario':<13} {'contender':<26} {'time s':>7} {'x odc':>6} {'req':>5} "
        f"{'x floor':>7} {'bytes':>9} {'x floor':>7} {'RSS MiB':>7} {'us/px/band':>10} "
        f"{'max|diff|':>9} {'NaN mis':>7} {'SCL px':>6} {'n':>2}"
    )
    lines += [head, "-" * len(head)]
    for name, sc in report["scenarios"].items():
        fl = sc["floor"]
        per = ", ".join(
            f"{k} {v['requests']} req {fb(v['bytes'])}" for k, v in fl.get("assets", {}).items()
        )
        lines.append(
            f"{name:<13} {'floor':<26} {'':>7} {'':>6} {fl['requests']:>5} {'':>7} "
            f"{fb(fl['bytes']):>9}   ({sc['items']} items, {sc['dates']} dates, grid "
            f"{sc['grid']['shape']}; {per})"
        )
        if "ndvi" in sc:
            nf = sc["ndvi"]["floor"]
            lines.append(
                f"{name:<13} {'floor (NDVI cube)':<26} {'':>7} {'':>6} {nf['requests']:>5} "
                f"{'':>7} {fb(nf['bytes']):>9}   ({sc['ndvi']['dates']} dates)"
            )
        for con, s in sc["contenders"].items():
            if "wall_s" not in s:
                lines.append(f"{name:<13} {con:<26} FAILED: {str(s.get('error', ''))[:120]}")
                continue
            t = s.get("truth", {})
            diff = max((t[b]["max_abs_diff"] for b in BANDS if b in t), default=None)
            nan = sum(t[b]["nan_mismatch"] for b in BANDS if b in t) if "B04" in t else None
            scl = t.get("SCL", {}).get("differing_pixels")
            lines.append(
                f"{name:<13} {con:<26} {s['wall_s']:>7.2f} {_x(s.get('time_vs_odc')):>6} "
                f"{s['requests']:>5.0f} {_x(s.get('requests_vs_floor')):>7} "
                f"{fb(s['bytes']):>9} {_x(s.get('bytes_vs_floor')):>7} "
                f"{s['peak_rss_bytes'] / 2**20:>7.0f} "
                f"{_x(s.get('us_per_pixel_band'), '{:.4f}'):>10} "
                f"{_x(diff, '{:.2g}'):>9} {_x(nan, '{}'):>7} {_x(scl, '{}'):>6} "
                f"{s['ok_runs']:>2}"
                + (f"  open {s['open_s']:.2f} s" if "open_s" in s and "open" in con else "")
                + ("" if s.get("runs_identical", True) else "  (runs differ)")
            )
        for toc, r in sc.get("per_pixel_band_vs_ndvi", {}).items():
            lines.append(
                f"{'':<13} per pixel and band, {toc} vs the NDVI cube: {r['ratio']:.2f}x "
                f"({r['toc_us']:.4f} vs {r['ndvi_us']:.4f} us; target <= 1.3)"
            )
        if name == "toc-mask":
            m = sc["cloudiest_month"]
            lines.append(
                f"{'':<13} cloudiest month {m['month']} (mean eo:cloud_cover "
                f"{m['mean_cloud_cover'][m['month']]:.1f} %); pixels kept by the true mask "
                f"{sc.get('kept_share', float('nan')):.1%}"
            )
            fm = sc.get("band_floor_masked")
            if fm:
                lines.append(
                    f"{'':<13} band floor: {fb(sc['band_floor_unmasked'])} unmasked, "
                    f"{fb(fm['bytes'])} for the {fm['tiles']} band tiles not fully masked "
                    f"({fm['files']} files, {fm['requests']} req): "
                    f"{1 - fm['bytes'] / sc['band_floor_unmasked']:.0%} less"
                )
            for con, s in sc["contenders"].items():
                if "band_bytes" in s:
                    lines.append(
                        f"{'':<13} {con:<26} band bytes {fb(s['band_bytes'])}"
                        f" ({s['band_requests']:.0f} req)"
                        + (
                            f", {s['band_bytes_saved_share']:.0%} saved"
                            if "band_bytes_saved_share" in s
                            else ""
                        )
                        + (
                            f", {s['band_bytes_vs_masked_floor']:.4f}x the masked floor "
                            "(target <= 1.0)"
                            if s.get("band_bytes_vs_masked_floor") is not None
                            else ""
                        )
                    )
                if fm and s.get("band_tile_bytes_vs_masked_tile_floor") is not None:
                    framing = s["band_bytes"] - s["band_header_read_bytes"] - s["band_tile_bytes"]
                    lines.append(
                        f"{'':<13} {'':<26}   of which tiles {fb(s['band_tile_bytes'])} = "
                        f"{s['band_tile_bytes_vs_masked_tile_floor']:.4f}x the floor's "
                        f"{fb(fm['tile_bytes'])}; header reads {fb(s['band_header_read_bytes'])}"
                        f" (floor: headers {fb(fm['header_bytes'])}); multipart part "
                        f"headers {fb(framing)}"
                    )
        if name == "toc-minclear":
            scl = sc["floor"]["assets"]["SCL"]
            clear = sc.get("band_floor_clear_dates", {})
            lines.append(
                f"{'':<13} floors: SCL of the season {fb(scl['bytes'])}, {scl['requests']} "
                f"req; B04 + B08 of the clear dates {fb(clear.get('bytes', 0))}, "
                f"{clear.get('requests', 0)} req"
            )
            for con, s in sc["contenders"].items():
                if "band_bytes" not in s:
                    continue
                lines.append(
                    f"{'':<13} {con:<26} SCL {fb(s['mask_bytes'])}, bands "
                    f"{fb(s['band_bytes'])}, other {fb(s['other_bytes'])}; dropped "
                    f"{len(s.get('dropped_dates', []))} dates"
                    + (
                        " (= truth)"
                        if s.get("dropped_equal_truth")
                        else f" (truth: {len(sc.get('truth_dropped_dates', []))})"
                    )
                    + f"; band files of dropped dates read: {len(s['band_files_of_dropped_dates'])}"
                )
            if sc.get("truth_dropped_dates") is not None:
                lines.append(f"{'':<13} dropped (truth): {', '.join(sc['truth_dropped_dates'])}")
    return "\n".join(lines)
