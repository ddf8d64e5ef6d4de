"""launch/colab_tpu.ipynb, executed top to bottom on the CPU at the tiny size."""

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "launch" / "colab_tpu.ipynb"


def outputs(cell) -> tuple[str, list[str]]:
    """A code cell's printed text and the MIME types of its displays."""
    text, kinds = "", []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            text += out["text"]
        else:
            kinds.extend(out.get("data", {}))
    return text, kinds


def test_colab_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    # The kernel inherits this environment (and PYTHONPATH / CMSEG_CACHE from the test's).
    monkeypatch.setenv("CMSEG_NOTEBOOK_CONFIG", "configs/cam_beta.py:tiny")
    monkeypatch.setenv("CMSEG_NOTEBOOK_SEEDS", "2")
    monkeypatch.setenv("CMSEG_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("CMSEG_NOTEBOOK_WORKDIR", str(workdir))
    monkeypatch.setenv("CMSEG_NOTEBOOK_PLAN_CONFIG", "configs/cam_beta.py:tiny")
    monkeypatch.setenv("CMSEG_NOTEBOOK_PLAN_SEEDS", "4")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError naming the cell that failed

    code = [c for c in nb.cells if c.cell_type == "code"]
    printed = "".join(outputs(c)[0] for c in code)
    kinds = [k for c in code for k in outputs(c)[1]]
    assert "pip install" not in printed  # importable already: no install
    assert "backend: cpu" in printed
    # The plan for this runtime's own device, and the data cell's line without a Drive folder.
    assert "device: cpu:cpu (compiled by XLA:CPU)" in printed
    assert "plan: 4 seeds (padded to 4) over 1 device(s), 1 per chunk" in printed
    assert "data: no LiTS folder given (LITS_DRIVE_DIR), the embedded phantom" in printed
    assert "LAYOUT: 2 seeds" in printed  # the seed layout the sweep chose
    assert "seed-step" in printed  # the progress bar
    assert "| MCC |" in printed
    assert "text/markdown" in kinds  # the report's tables
    assert kinds.count("image/png") >= 3  # its figures and the curves
    assert (workdir / "report" / "report.md").exists()
    assert (workdir / "report" / "tensorboard_curves.png").exists()
    assert (tmp_path / "run.zip").stat().st_size > 0
    assert (workdir / "results.csv").exists()
