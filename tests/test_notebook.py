"""recipes/notebooks/whatif.ipynb runs top to bottom on a CPU, without errors, and every plot cell draws."""
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parent.parent / "recipes" / "notebooks" / "whatif.ipynb"
PLOT_KINDS = ("memory_breakdown", "time_breakdown", "tp_pp_heatmap", "pareto_front")
BUDGET_S = 120


def is_plot_cell(source: str) -> bool:
    return "plots." in source or ".plot(" in source


def test_whatif_notebook_runs_and_every_plot_cell_shows_an_image():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=BUDGET_S, kernel_name="python3", allow_errors=True,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    print(f"whatif.ipynb: {len(nb.cells)} cells executed in {elapsed:.1f} s")
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [(c.source.splitlines()[0], o.ename, o.evalue) for c in code for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    plot_cells = [c for c in code if is_plot_cell(c.source)]
    assert {k for k in PLOT_KINDS if any(f"plots.{k}(" in c.source for c in plot_cells)} == set(PLOT_KINDS)
    no_image = [c.source.splitlines()[0] for c in plot_cells
                if not any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert not no_image
    assert elapsed < BUDGET_S
