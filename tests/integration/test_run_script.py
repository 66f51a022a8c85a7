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


_TOY_PYPROJECT = """\
[tool.mypy]
files = ["toy"]

[tool.importlinter]
root_package = "toy"

[[tool.importlinter.contracts]]
name = "low never imports high"
type = "layers"
containers = ["toy"]
layers = ["high", "low"]
"""


def _toy_project(root: Path, *, contract_broken: bool, type_broken: bool) -> Path:
    """A two-module project with a layers contract and a mypy configuration, in the
    shape of this one's pyproject.toml, optionally with a broken contract or a type error."""
    package = root / "toy"
    package.mkdir(parents=True)
    (root / "pyproject.toml").write_text(_TOY_PYPROJECT)
    (package / "__init__.py").write_text("")
    low = "def half(x: int) -> float:\n    return x / 2\n"
    (package / "low.py").write_text(low + ("\nfrom toy import high\n" if contract_broken else ""))
    kind = "str" if type_broken else "float"
    (package / "high.py").write_text(f"from toy.low import half\n\nVALUE: {kind} = half(3)\n")
    return root


@pytest.mark.parametrize(
    ("contract_broken", "type_broken"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_the_static_checks_run_both_tools_and_fail_naming_each_that_failed(
    tmp_path, contract_broken, type_broken
):
    """``static_checks`` (run before pytest by ``run.sh test``) runs the real lint-imports
    and mypy of the virtualenv in the current directory, as it does in the project root;
    a small project stands in for this one so that each can be broken in turn."""
    project = _toy_project(tmp_path, contract_broken=contract_broken, type_broken=type_broken)
    venv = Path(sys.executable).parents[1]  # the one running the tests, as under run.sh
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"VENV": str(venv)}
    done = subprocess.run(
        ["bash", "-c", f'source "{RUN_SH}"; cd "{project}"; static_checks; echo "checks passed"'],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "--- lint-imports" in done.stdout and "--- mypy" in done.stdout  # both always run
    assert ("FAILED: lint-imports" in done.stderr) == contract_broken, done.stderr
    assert ("FAILED: mypy" in done.stderr) == type_broken, done.stderr
    if contract_broken:
        assert "toy.low -> toy.high" in done.stdout
    if type_broken:
        assert "toy/high.py:3: error: Incompatible types in assignment" in done.stdout
    ok = not (contract_broken or type_broken)
    assert done.returncode == (0 if ok else 1), (done.stdout, done.stderr)
    assert ("checks passed" in done.stdout) == ok
