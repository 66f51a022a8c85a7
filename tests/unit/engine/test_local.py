"""Local copies of Terrascope's files (``engine/local.py``): on a real file system under
``tmp_path``."""

from __future__ import annotations

import os

from xarray_terrascope.engine import local


def test_local_files_under_a_missing_directory_cost_one_look(tmp_path, monkeypatch, options):
    """Off Terrascope's machines the local hrefs all lie under a missing directory: after
    the first look, the other files (and the next reads) ask the file system nothing."""
    looks = []
    isfile, isdir = os.path.isfile, os.path.isdir
    monkeypatch.setattr(os.path, "isfile", lambda p: looks.append(p) or isfile(p))
    monkeypatch.setattr(os.path, "isdir", lambda p: looks.append(p) or isdir(p))
    root = tmp_path / "data" / "MTDA"
    hrefs = [f"file://{root}/2025/06/{day:02d}/S2_{day}.tif" for day in range(1, 31)]
    assert [local.local_path(h) for h in hrefs] == [None] * 30
    assert looks[0] == hrefs[0][len("file://") :]
    assert looks[-1] == str(tmp_path)  # up to the first directory that exists
    first = len(looks)
    assert [local.local_path(h) for h in hrefs] == [None] * 30
    assert len(looks) == first
    # a directory that appears is seen once the absence is forgotten
    made = root / "2025" / "06" / "07" / "S2_7.tif"
    made.parent.mkdir(parents=True)
    made.write_bytes(b"II*\x00")
    assert local.local_path(hrefs[6]) is None  # still remembered as missing
    options(local_absence_seconds=0.0)
    assert local.local_path(hrefs[6]) == str(made)
    assert local.local_path(hrefs[7]) is None


def test_file_urls_with_localhost_or_escapes_name_the_local_file(tmp_path):
    """RFC 8089: ``file://localhost/p`` is this machine's ``/p``, and a URL's path is
    percent-escaped; a file URL of another host is never a local file."""
    made = tmp_path / "local copies" / "S2_1.tif"
    made.parent.mkdir()
    made.write_bytes(b"II*\x00")
    escaped = str(made).replace(" ", "%20")
    assert local.local_path(f"file://localhost{escaped}") == str(made)
    assert local.local_path(f"FILE://LOCALHOST{escaped}") == str(made)
    assert local.local_path(f"file://{escaped}") == str(made)
    assert local.local_path(f"file:{escaped}") == str(made)
    assert local.local_path(str(made)) == str(made)
    assert local.local_path(f"file://otherhost{escaped}") is None
