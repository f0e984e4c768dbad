"""notebooks/tour.ipynb runs end to end (nbclient, CPU), with a short training budget."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]


def test_tour_notebook_executes():
    nb = nbformat.read(ROOT / "notebooks" / "tour.ipynb", as_version=4)
    env_before = {k: os.environ.get(k) for k in ("MTSPARK_TOUR_TRAIN_SECONDS", "MTSPARK_TOUR_MAX_STEPS")}
    os.environ["MTSPARK_TOUR_TRAIN_SECONDS"] = "5"
    os.environ["MTSPARK_TOUR_MAX_STEPS"] = "40"
    try:
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": str(ROOT)}})
        client.execute()
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # frames, spike raster, gates, training curve
    assert "test accuracy" in text and "| data set | rate conv0 |" in text
    assert "|dQ/d trunk/conv0/kernel" in text
