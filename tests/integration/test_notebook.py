"""The starter notebook runs as shipped: it starts the sandbox in its own kernel (offline),
with no ``TERRASCOPE_*`` variable and no netrc."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[2] / "notebooks" / "ndvi_time_series.ipynb"


@pytest.mark.slow
@pytest.mark.timeout(600)  # a season rendered by the sandbox: ~2 min on two busy cores
def test_notebook_runs_offline_against_its_own_sandbox(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("TERRASCOPE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-such-netrc"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel draws inline, as in Jupyter
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute(env=dict(os.environ))
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "logged in as sandbox-user at http://127.0.0.1:" in text
    assert "dates have more than half of the field visible" in text
    # the parcel section: zonal statistics per crop type, over parcels of the sandbox
    parcels_line = next(line for line in text.splitlines() if "dates with clear parcels" in line)
    assert int(parcels_line.split()[0]) > 50 and int(parcels_line.split()[2]) > 10
    # the cube's repr and the slider both rendered
    rich = [o for o in outputs if o.output_type in ("execute_result", "display_data")]
    assert any("text/html" in o.get("data", {}) for o in rich)
    # the pictures: the mean curve, the curves per crop, the monthly composites
    assert sum("image/png" in o.get("data", {}) for o in rich) >= 3
    # the sandbox's password is made in the kernel: no output names it
    assert "password" not in text.lower()
