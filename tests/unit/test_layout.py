"""The test tree's helper modules are not collected as tests (issue 23: ``tests/_nginx.py``
and ``tests/_pgstac.py`` were, under ``--doctest-modules``; they now live in
``tests/support``, which ``tests/conftest.py`` ignores)."""

from __future__ import annotations

from pathlib import Path

from tests import conftest

TESTS = Path(conftest.__file__).parent


def test_helper_modules_are_ignored_or_hold_nothing_pytest_would_collect():
    """A module under tests/ that is not a test file, a conftest or a package marker is
    either in a directory that ``collect_ignore`` names, or has no doctest and no
    ``test_`` function (so ``--doctest-modules`` finds nothing in it)."""
    ignored = [TESTS / name for name in conftest.collect_ignore]
    assert all(path.is_dir() for path in ignored), ignored
    helpers = [
        path
        for path in TESTS.rglob("*.py")
        if not path.name.startswith("test_") and path.name not in ("conftest.py", "__init__.py")
    ]
    assert any(path.parent.name == "support" for path in helpers)
    collected = [
        path
        for path in helpers
        if not any(folder in path.parents for folder in ignored)
        and (">>>" in path.read_text() or "\ndef test_" in path.read_text())
    ]
    assert collected == []
    assert not (TESTS / "_nginx.py").exists() and not (TESTS / "_pgstac.py").exists()
