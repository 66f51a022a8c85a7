"""scripts/run.sh: in CI (``CI=true``) a real-server tier it cannot set up fails the run;
elsewhere its tests skip, saying so.

The script's own set-up functions run (the script sourced, so only they run) on a
machine made to lack what they install: ``PATH`` holds stubs of ``apt-get`` (and
``sudo``) that fail as they do offline, since a real package download cannot be made to
fail on purpose, and ``PYTHON`` is ``false``, so no virtualenv can be created.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN_SH = Path(__file__).resolve().parents[2] / "scripts" / "run.sh"


def _offline_machine(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine where no package can be fetched or installed."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "apt-get").write_text("#!/bin/sh\necho 'E: offline (stub)' >&2\nexit 100\n")
    (stubs / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    (tmp_path / "venv").mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CI", "TERRASCOPE_TEST_NGINX", "TERRASCOPE_TEST_PGSTAC")
    }
    env.update(PATH=f"{stubs}:/usr/bin:/bin", VENV=str(tmp_path / "venv"), PYTHON="false")
    return env


def _set_up(function: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f'source "{RUN_SH}"; {function}; echo "{function} returned"'],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("function", "tests"),
    [
        ("setup_nginx", "tests/integration/test_nginx.py"),
        ("setup_pgstac", "tests/integration/test_pgstac.py"),
    ],
)
def test_a_tier_that_cannot_be_set_up_fails_in_ci_and_skips_elsewhere(tmp_path, function, tests):
    if function == "setup_nginx" and Path("/usr/sbin/nginx").exists():
        pytest.skip("a system nginx is installed: setup_nginx has nothing to set up")
    env = _offline_machine(tmp_path)

    done = _set_up(function, env)  # a developer's machine: the tier's tests skip
    assert done.returncode == 0, done.stderr
    assert f"{function} returned" in done.stdout
    assert f"{tests} will skip" in done.stderr
    assert "TERRASCOPE_TEST" not in done.stdout

    done = _set_up(function, {**env, "CI": "true"})  # CI: the run stops here
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"{function} returned" not in done.stdout
    assert f"CI=true, so this run fails rather than skip {tests}" in done.stderr


@pytest.mark.parametrize(
    ("module", "missing"),
    [
        ("tests/integration/test_nginx.py", {"TERRASCOPE_TEST_NGINX": "/nonexistent/nginx"}),
        ("tests/integration/test_pgstac.py", {"TERRASCOPE_TEST_PGSTAC": ""}),
    ],
)
def test_a_missing_tier_skips_its_tests_but_fails_them_in_ci(module, missing):
    """pytest itself, on a machine without the tier: its tests skip outside CI and fail
    with CI=true (a tier can go missing after run.sh, e.g. when the caller set its
    variable to a wrong path)."""
    root = RUN_SH.parents[1]
    env = {k: v for k, v in os.environ.items() if k != "CI"} | missing
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", module]

    def run(extra: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            command, cwd=root, env=env | extra, capture_output=True, text=True, timeout=300
        )

    skipped = run({})
    assert skipped.returncode == 0, skipped.stdout[-3000:]
    assert " skipped" in skipped.stdout and " passed" not in skipped.stdout
    failed = run({"CI": "true"})
    assert failed.returncode == 1, failed.stdout[-3000:]
    assert "CI=true: a missing test tier fails the run" in failed.stdout
    assert " passed" not in failed.stdout
