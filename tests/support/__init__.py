"""Helpers the tests share, not tests: real-server harnesses (:mod:`.nginx`,
:mod:`.pgstac`, on :mod:`.harness`), a recording proxy (:mod:`.recording`), loopback
aiohttp servers (:mod:`.loopback`) and small helpers (:mod:`.helpers`). ``tests/conftest.py``
keeps pytest from collecting this folder."""
