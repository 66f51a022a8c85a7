"""Fixtures of the analysis tests: a dask scheduler that refuses to compute."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import dask
import pytest


class _CountingScheduler:
    """A dask scheduler that raises once more than ``max_computes`` computes were asked
    (as cf-xarray's and xarray's ``raise_if_dask_computes``)."""

    def __init__(self, max_computes: int) -> None:
        self.total = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        self.total += 1
        if self.total > self.max_computes:
            raise RuntimeError(f"Too many dask computes: {self.total} > {self.max_computes}")
        return dask.get(dsk, keys, **kwargs)


@pytest.fixture
def raise_if_dask_computes() -> Callable[..., contextlib.AbstractContextManager]:
    """``with raise_if_dask_computes(): ...`` fails the test if anything computes."""

    @contextlib.contextmanager
    def guard(max_computes: int = 0) -> Iterator[None]:
        with dask.config.set(scheduler=_CountingScheduler(max_computes)):
            yield

    return guard
