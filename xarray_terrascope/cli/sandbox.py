"""``xarray-terrascope sandbox`` (serve the local Terrascope stand-in until Ctrl-C) and
``xarray-terrascope demo`` (the main job on it, :mod:`xarray_terrascope.cli.demo`)."""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

from xarray_terrascope.cli.demo import run_demo

__all__ = ["register"]


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _number(most: float | None = None, *, above_zero: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (
            math.isfinite(value)
            and (value > 0 if above_zero else value >= 0)
            and (most is None or value <= most)
        ):
            bound = "> 0" if above_zero else ">= 0"
            raise argparse.ArgumentTypeError(
                f"a number {bound}{f' and <= {most:g}' if most is not None else ''}, got {text!r}"
            )
        return value

    return parse


def _cache_dir(text: str) -> str:
    """``--cache-dir``: made now, and proven writable, before the servers start."""
    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise argparse.ArgumentTypeError(
            f"cannot write COGs in {text!r}: {err.strerror or err}"
        ) from err
    return text


def _print_exports(sandbox) -> None:
    for key, value in sandbox.env.items():
        print(f"export {key}={value}")


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (kill, docker stop, systemd) stops as Ctrl-C does


def _run_sandbox(args: argparse.Namespace) -> int:
    import signal
    import threading

    from xarray_terrascope.testing import Sandbox

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        sandbox = Sandbox(
            bearer=True,  # `xarray-terrascope login` (OpenID Connect) works against it
            seed=args.seed,
            latency=args.latency,
            cache_dir=args.cache_dir,
            max_concurrent=args.max_concurrent,
            max_rate=args.max_rate,
            fault_rate=args.fault_rate,
            drop_rate=args.drop_rate,
        ).start()
        try:
            print("# Terrascope sandbox running on loopback; paste these lines in another shell:")
            _print_exports(sandbox)
            print("# Ctrl-C (or SIGTERM) stops it.", flush=True)
            sandbox.serve_forever()  # returns after Ctrl-C, with the servers stopped
        except KeyboardInterrupt:  # Ctrl-C before serve_forever took over
            sandbox.stop()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    result = run_demo(Path(args.out), seed=args.seed)
    print(
        f"{result['parcels']} parcels, {result['dates']} dates in {result['seconds']:.0f} s; "
        f"the download server logged {result['requests']} requests"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sandbox`` and ``demo`` commands to the console script's subcommands."""
    p = sub.add_parser("sandbox", help="run the local Terrascope stand-in until Ctrl-C")
    p.add_argument("--seed", type=_count(0), default=0, help="seed of the synthetic world")
    p.add_argument("--latency", type=_number(), default=0.0, help="seconds added per download")
    p.add_argument("--cache-dir", type=_cache_dir, help="keep generated COGs here between runs")
    p.add_argument(
        "--max-concurrent", type=_count(1), help="downloads in flight allowed; more get 429"
    )
    p.add_argument(
        "--max-rate",
        type=_number(above_zero=True),
        help="downloads per second allowed (a bucket of 5); more get 429",
    )
    p.add_argument(
        "--fault-rate", type=_number(1.0), default=0.0, help="share of downloads answered 503"
    )
    p.add_argument(
        "--drop-rate", type=_number(1.0), default=0.0, help="share of downloads dropped mid-answer"
    )
    p.set_defaults(func=_run_sandbox)

    p = sub.add_parser(
        "demo",
        help="the main job on the embedded sandbox: parcel NDVI per crop, monthly "
        "max-NDVI composites, the time slider with the parcels",
    )
    p.add_argument("--out", default="demo-output", help="directory for the PNGs and the HTML")
    p.add_argument("--seed", type=_count(0), default=0, help="seed of the synthetic world")
    p.set_defaults(func=_run_demo)
