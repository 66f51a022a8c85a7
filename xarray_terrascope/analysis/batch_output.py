"""The output folder of :func:`xarray_terrascope.analysis.batch.run_zonal_batch`: its
manifest, the partitions' names, atomic writes, and the check that a folder belongs to
the run about to write into it.

A folder holds ``_manifest.json`` (the run's arguments and their hash) and one
``part-NNNNN.parquet`` per batch of parcels (plus ``_steps/<step>/part-NNNNN.parquet``
per post-step: pyarrow, pandas, geopandas and dask read the folder as one dataset of the
statistics, as they skip names that begin with ``_`` or ``.``). Every file is written to
a temporary name in the same folder, flushed to disk and renamed into place
(:func:`os.replace`): a partition exists whole or not at all, whatever kills the writer.
The main partition is written last, so its presence means the batch is done. One run at
a time writes into a folder (:func:`hold`, a lock the operating system releases when
the process ends).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xarray_terrascope.exceptions import BatchOutputError, InvalidArgumentError

__all__ = [
    "FORMAT",
    "LOCK",
    "MANIFEST",
    "STEPS",
    "check_or_create",
    "done_partitions",
    "fingerprint",
    "fingerprint_text",
    "hold",
    "part_name",
    "step_folder",
    "write_atomic",
]

logger = logging.getLogger(__name__)

#: The manifest's file name in the output folder.
MANIFEST = "_manifest.json"
#: The manifest's ``format`` value (``/1``: the post-steps' folders beside the
#: partitions, where a dataset reader took them for more statistics).
FORMAT = "xarray-terrascope-zonal-batch/2"
#: The folder of the post-steps' tables, one sub-folder each.
STEPS = "_steps"
#: The lock file of the run writing into the folder.
LOCK = "_run.lock"
_PART = re.compile(r"^part-(\d{5,})\.parquet$")
_TMP_PREFIX = ".tmp-"


def part_name(index: int) -> str:
    """``part-00042.parquet`` for batch 42."""
    return f"part-{index:05d}.parquet"


def step_folder(folder: Path, step: str) -> Path:
    """Where post-step ``step`` writes its partitions."""
    return folder / STEPS / step


@contextmanager
def hold(folder: Path) -> Iterator[None]:
    """Create ``folder`` if needed and hold its lock while the block runs.

    Raises
    ------
    BatchOutputError
        When another run (of this or another process) holds it.
    InvalidArgumentError
        When the folder cannot be created or the lock file written.
    """
    import filelock

    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(folder / LOCK, timeout=0)
        lock.acquire()
    except filelock.Timeout as err:
        raise BatchOutputError(
            f"out_dir: another run is writing into {str(folder)!r} (it holds {LOCK}): "
            "wait for it to end, or write this run to another folder"
        ) from err
    except OSError as err:
        raise InvalidArgumentError(f"out_dir: cannot use {str(folder)!r}: {err}") from err
    try:
        yield
    finally:
        lock.release()


def fingerprint(parcels: Any) -> str:
    """SHA-256 of a GeoDataFrame's content in its order: every attribute column (name,
    dtype and values) and the geometries' WKB, so a changed file is told apart."""
    import pandas as pd
    import shapely

    digest = hashlib.sha256()
    geometry = parcels.geometry.name
    digest.update(str(parcels.crs.to_string() if parcels.crs else None).encode())
    for column in parcels.columns:
        if column == geometry:
            continue
        values = parcels[column]
        digest.update(f"{column}:{values.dtype}".encode())
        digest.update(pd.util.hash_pandas_object(values, index=False).to_numpy().tobytes())
    for wkb in shapely.to_wkb(parcels.geometry.to_numpy(), output_dimension=2):
        digest.update(len(wkb).to_bytes(4, "little"))
        digest.update(wkb)
    return digest.hexdigest()


def fingerprint_text(text: str) -> str:
    """SHA-256 of a text, hex."""
    return hashlib.sha256(text.encode()).hexdigest()


def _hash(arguments: Mapping[str, Any]) -> str:
    text = json.dumps(arguments, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` for a temporary path next to ``path`` (a file it creates, with
    the process's umask), flush it to disk and rename it to ``path``; the temporary file
    is removed if anything fails."""
    tmp = path.parent / f"{_TMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        write(tmp)
        with tmp.open("rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files a killed run left behind (never renamed into place)."""
    steps = folder / STEPS
    subfolders = [p for p in steps.iterdir() if p.is_dir()] if steps.is_dir() else []
    for path in [folder, *subfolders]:
        for tmp in path.glob(_TMP_PREFIX + "*"):
            logger.debug("removing %s, left by an interrupted run", tmp)
            tmp.unlink(missing_ok=True)


def _differing(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The arguments that differ, in the order of ``new`` (the most telling first)."""
    keys = [*new, *(k for k in old if k not in new)]
    return [k for k in keys if old.get(k) != new.get(k)]


def check_or_create(folder: Path, arguments: Mapping[str, Any], extra: Mapping[str, Any]) -> str:
    """Make ``folder`` the output of the run with ``arguments``; return their hash.

    A new or empty folder gets a manifest. A folder with this run's manifest is taken
    as it is (its partitions are skipped). Anything else is refused.

    Raises
    ------
    BatchOutputError
        When the manifest holds other arguments (``argument`` names the first that
        differs), or the folder holds files but no manifest of a batch.
    InvalidArgumentError
        When the folder cannot be created or read.
    """
    digest = _hash(arguments)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        manifest_path = folder / MANIFEST
        entries = sorted(p.name for p in folder.iterdir())
    except OSError as err:
        raise InvalidArgumentError(f"out_dir: cannot use {str(folder)!r}: {err}") from err
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            raise BatchOutputError(
                f"out_dir: {str(manifest_path)!r} is not a batch manifest ({err}): "
                "choose a new or empty folder"
            ) from err
        if manifest.get("format") == "xarray-terrascope-zonal-batch/1":
            raise BatchOutputError(
                f"out_dir: {str(folder)!r} holds a batch of an earlier version of this "
                "package (its post-steps' folders beside the partitions): finish it with "
                "that version, or write this run to a new or empty folder"
            )
        if manifest.get("format") != FORMAT:
            raise BatchOutputError(
                f"out_dir: {str(folder)!r} holds the output of something else "
                f"(manifest format {manifest.get('format')!r}): choose a new or empty folder"
            )
        if manifest.get("hash") != digest:
            old = manifest.get("arguments") or {}
            names = _differing(old, arguments)
            first = names[0] if names else None
            detail = "; ".join(
                f"{n}: {old.get(n)!r} then, {arguments.get(n)!r} now" for n in names[:3]
            )
            raise BatchOutputError(
                f"out_dir: {str(folder)!r} holds the partitions of a run with other "
                f"arguments ({detail or 'its hash differs'}). Rerun with the arguments of "
                "that run to resume it, or write this run to a new or empty folder",
                argument=first,
            )
        _remove_stale_temporaries(folder)
        return digest
    # a run killed while it wrote the manifest leaves only its temporary file
    entries = [n for n in entries if not n.startswith(_TMP_PREFIX) and n != LOCK]
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise BatchOutputError(
            f"out_dir: {str(folder)!r} is not empty and has no {MANIFEST} ({shown}): it "
            "holds something else than a batch of this package; choose a new or empty folder"
        )
    _remove_stale_temporaries(folder)
    text = json.dumps(
        {"format": FORMAT, "hash": digest, "arguments": dict(arguments), **extra},
        indent=2,
        sort_keys=True,
    )
    write_atomic(manifest_path, lambda tmp: _write_text(tmp, text + "\n"))
    return digest


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def done_partitions(folder: Path) -> set[int]:
    """The batches whose main partition is in ``folder``."""
    found = set()
    for path in folder.iterdir():
        match = _PART.match(path.name)
        if match:
            found.add(int(match.group(1)))
    return found
