"""The options object: precedence (set_options > environment > default), scoping of
``with`` blocks, checks, and one place that reads the environment."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

import xarray_terrascope as xts
from xarray_terrascope.exceptions import InvalidArgumentError
from xarray_terrascope.options import Options, options_table


def test_an_option_set_wins_over_its_variable_which_wins_over_the_default(monkeypatch):
    monkeypatch.delenv("TERRASCOPE_MAX_CONNECTIONS", raising=False)
    assert xts.get_options().max_connections == 32
    monkeypatch.setenv("TERRASCOPE_MAX_CONNECTIONS", "8")
    assert xts.get_options().max_connections == 8  # read at each call
    with xts.set_options(max_connections=3) as options:
        assert options.max_connections == 3
        assert xts.get_options().max_connections == 3
    assert xts.get_options().max_connections == 8


def test_the_options_are_resolved_again_only_when_something_changed(monkeypatch):
    """The read path asks for the options about ten times per file: while neither the
    environment nor ``set_options`` changed, the same frozen object comes back (resolving
    them anew cost 0.1-0.2 s of CPU per field read); any change is seen at the next call."""
    monkeypatch.delenv("TERRASCOPE_MAX_CONNECTIONS", raising=False)
    first = xts.get_options()
    assert xts.get_options() is first
    monkeypatch.setenv("TERRASCOPE_MAX_CONNECTIONS", "3")
    changed = xts.get_options()
    assert changed is not first and changed.max_connections == 3
    assert xts.get_options() is changed
    with xts.set_options(max_connections=4):
        assert xts.get_options().max_connections == 4
        with xts.set_options(max_connections=4):  # the same value set again
            assert xts.get_options().max_connections == 4
        assert xts.get_options().max_connections == 4
    assert xts.get_options().max_connections == 3
    monkeypatch.setenv("TERRASCOPE_MAX_CONNECTIONS", "")
    assert xts.get_options().max_connections == 32


def test_nested_blocks_restore_what_was_there(monkeypatch):
    monkeypatch.delenv("TERRASCOPE_TILE_CACHE_MB", raising=False)
    with xts.set_options(tile_cache_mb=1):
        with xts.set_options(tile_cache_mb=2, readahead_files=0):
            assert (xts.get_options().tile_cache_mb, xts.get_options().readahead_files) == (2, 0)
        assert (xts.get_options().tile_cache_mb, xts.get_options().readahead_files) == (1, 32)
    assert xts.get_options().tile_cache_mb == 64


def test_set_options_without_a_block_lasts_until_changed():
    xts.set_options(readahead_files=5)
    try:
        assert xts.get_options().readahead_files == 5
    finally:
        xts.set_options(readahead_files=32)
    assert xts.get_options().readahead_files == 32


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_connections", 0),
        ("max_connections", 2.5),
        ("max_connections", True),
        ("tile_cache_mb", -1),
        ("stac_url", ""),
        ("header_cache", "maybe"),
        ("header_write_defer", -1.0),
        ("cache_dir", ""),
    ],
)
def test_a_bad_value_is_refused_and_nothing_is_set(name, value):
    before = xts.get_options()
    with pytest.raises(InvalidArgumentError, match=name):
        xts.set_options(readahead_files=1, **{name: value})
    assert xts.get_options() == before


def test_an_unknown_option_names_the_known_ones():
    with pytest.raises(InvalidArgumentError, match="max_connections"):
        xts.set_options(max_conections=4)


def test_a_bad_variable_warns_once_and_keeps_the_default(monkeypatch, caplog):
    monkeypatch.setenv("TERRASCOPE_HEADER_CACHE_MB", "many")
    with caplog.at_level(logging.WARNING, logger="xarray_terrascope.options"):
        assert xts.get_options().header_cache_mb == 256
        assert xts.get_options().header_cache_mb == 256
    warned = [r for r in caplog.records if "TERRASCOPE_HEADER_CACHE_MB" in r.getMessage()]
    assert len(warned) == 1


@pytest.mark.parametrize(("raw", "value"), [("0", False), ("off", False), ("1", True)])
def test_flags_from_the_environment(monkeypatch, raw, value):
    monkeypatch.setenv("TERRASCOPE_HEADER_CACHE", raw)
    assert xts.get_options().header_cache is value


def test_the_options_are_frozen_and_paths_are_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("TERRASCOPE_CACHE_DIR", str(tmp_path))
    options = xts.get_options()
    assert options.cache_dir == Path(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_connections = 1  # type: ignore[misc]


def test_allowed_origins_follow_the_download_url_unless_hosts_are_given(monkeypatch):
    monkeypatch.delenv("TERRASCOPE_DOWNLOAD_HOSTS", raising=False)
    with xts.set_options(download_url="http://127.0.0.1:8080/download/"):
        assert xts.get_options().allowed_origins == {"http://127.0.0.1:8080"}
    with xts.set_options(download_hosts=["a.example", "http://b.example:81"]):
        assert xts.get_options().allowed_origins == {
            "https://a.example:443",
            "http://b.example:81",
        }


def test_the_table_lists_every_option_and_its_variable():
    table = options_table()
    for field in dataclasses.fields(Options):
        row = next(line for line in table.splitlines() if line.startswith(f"| `{field.name}`"))
        if field.metadata["env"]:
            assert f"`{field.metadata['env']}`" in row


def test_no_module_of_the_package_reads_a_terrascope_variable_but_options_and_auth():
    """Every TERRASCOPE_* variable is read in one place (credentials and the netrc path
    excepted: login reads them)."""
    import re

    root = Path(xts.__file__).parent
    readers = set()
    for path in root.rglob("*.py"):
        if "testing" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"os\.environ(\.get)?[\[(]", text) and "TERRASCOPE_" in text:
            readers.add(path.relative_to(root).as_posix())
    assert readers <= {"options.py", "auth/state.py", "auth/signin.py"}, readers


def test_bad_numeric_settings_warn_and_keep_the_default(monkeypatch, caplog):
    from xarray_terrascope.engine import aio

    tiles = aio.engine().tiles

    monkeypatch.setenv("TERRASCOPE_MAX_CONNECTIONS", "lots")
    monkeypatch.setenv("TERRASCOPE_TILE_CACHE_MB", "-5")
    with caplog.at_level("WARNING", logger="xarray_terrascope.options"):
        assert xts.get_options().max_connections == 32
        assert tiles.max_bytes == 64 * 2**20
        assert tiles.max_bytes == 64 * 2**20  # read per stored tile: warned once
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "TERRASCOPE_MAX_CONNECTIONS='lots'" in m]) == 1, messages
    assert len([m for m in messages if "TERRASCOPE_TILE_CACHE_MB='-5'" in m]) == 1, messages
    monkeypatch.setenv("TERRASCOPE_MAX_CONNECTIONS", "0")  # below its minimum, 1
    assert xts.get_options().max_connections == 32
    monkeypatch.setenv("TERRASCOPE_MAX_CONNECTIONS", " 7 ")
    assert xts.get_options().max_connections == 7
    monkeypatch.setenv("TERRASCOPE_TILE_CACHE_MB", "0")  # allowed: keep no tile
    assert tiles.max_bytes == 0
    with xts.set_options(max_connections=3):  # an option set wins over its variable
        assert xts.get_options().max_connections == 3
    assert xts.get_options().max_connections == 7
