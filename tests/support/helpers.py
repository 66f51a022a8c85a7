"""What tests of both levels import: the sandbox's collection names, download-log
filters, the skip-or-fail rule of missing real-server tiers, Ctrl-C for child processes,
and the benchmarks' modules."""

from __future__ import annotations

import os
import sys

import pytest

__all__ = [
    "FAPAR",
    "IN_CI",
    "NDVI",
    "PYTHON_CHILD",
    "TERRASCOPE_VARS",
    "benchmark_module",
    "interrupt",
    "missing_tier",
    "restore_sigint",
    "tif_records",
]

#: In CI (``CI=true``, set by GitHub Actions and .ci/run) a real-server tier that is
#: missing fails its tests: a green run must not hide that they never ran.
IN_CI = os.environ.get("CI") == "true"


def missing_tier(reason: str) -> None:
    """Skip the test for want of a real server or browser (``reason``); fail it in CI."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing test tier fails the run)", pytrace=False)
    pytest.skip(reason)


#: Credentials a process may take from its environment (the workers must not have them).
TERRASCOPE_VARS = ("TERRASCOPE_USERNAME", "TERRASCOPE_PASSWORD")
NDVI = "terrascope-s2-ndvi-v2"
FAPAR = "terrascope-s2-fapar-v2"


def tif_records(sandbox, **kw):
    """Download-server records of COG requests."""
    return [r for r in sandbox.log.records(**kw) if r.path.endswith(".tif")]


def interrupt(proc) -> None:
    """Stop a child process the way a user does (Ctrl-C), by its own PID; close its
    pipes. ``proc.returncode`` tells how it ended.

    A child that has not exited 30 s later fails the test: it gets SIGABRT, which a
    child started with ``-X faulthandler`` (:data:`PYTHON_CHILD`) answers by writing the
    stack of each of its threads to stderr, and that stderr goes into the failure.
    """
    import signal
    import subprocess

    proc.send_signal(signal.SIGINT)
    try:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            tail = proc.stderr.read()[-8000:] if proc.stderr is not None else ""
            raise AssertionError(
                f"{proc.args} did not stop within 30 s of Ctrl-C; its stderr ends with:\n{tail}"
            ) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


#: How tests start a Python child that :func:`interrupt` may have to diagnose.
PYTHON_CHILD = [sys.executable, "-X", "faulthandler"]


def restore_sigint() -> None:
    """``preexec_fn`` of a child that :func:`interrupt` stops: Ctrl-C's default action
    in it even when this test run itself ignores SIGINT, as a background job of a
    non-interactive shell (or ``nohup``) does, which a child would inherit and Python
    would honour by never raising ``KeyboardInterrupt``."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def benchmark_module(name: str):
    """A module of ``benchmarks/`` (not a package: its scripts import each other by
    file), loaded from its file; e.g. ``_floor``, the read floors that tests measure
    against."""
    import importlib.util
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # what the module imports of its siblings
    spec = importlib.util.spec_from_file_location(f"benchmarks.{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
