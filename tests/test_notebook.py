"""The tour notebook runs top to bottom and draws its figures.

``notebooks/persona_refusal_tour.ipynb`` is executed on a temporary copy with the seeded
tiny model (``PERSONA_REFUSAL_NOTEBOOK_MODEL=tiny``: every cell runs in seconds; the story
is meaningless on a random model, the code paths are the ones the demo model takes). Any
cell error fails the test. The kernel is this interpreter (a kernelspec written to a
temporary ``JUPYTER_PATH``), so the notebook sees the package under test.

The committed copy of the notebook carries the outputs of one run on the demo model; the
last test checks that they are there and complete (a cleared or failed notebook must not
be committed by accident).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook extra is not installed (pip install nbformat)")
nbclient = pytest.importorskip("nbclient", reason="the notebook extra is not installed (pip install nbclient)")
pytest.importorskip("ipykernel", reason="the notebook extra is not installed (pip install ipykernel)")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "persona_refusal_tour.ipynb"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
KERNEL = "persona-refusal-test"


def _figures(nb) -> list[dict]:
    """The plotly figures a notebook's outputs hold, in order."""
    return [out["data"][PLOTLY_MIME] for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if PLOTLY_MIME in out.get("data", {})]


def _stderr(nb) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []) if out.get("output_type") == "stream" and out.get("name") == "stderr")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed on the tiny model: ``(notebook, seconds)``."""
    tmp = tmp_path_factory.mktemp("notebook")
    spec = tmp / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "persona_refusal tests", "language": "python"}))
    work = tmp / "run"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    nb = nbformat.read(work / NOTEBOOK.name, as_version=4)

    with pytest.MonkeyPatch.context() as mp:  # the kernel inherits this environment
        mp.setenv("JUPYTER_PATH", str(tmp / "jupyter"))
        mp.setenv("PERSONA_REFUSAL_NOTEBOOK_MODEL", "tiny")
        mp.setenv("OMP_NUM_THREADS", "1")  # the tiny model gains nothing from threads
        mp.delenv("PLOTLY_RENDERER", raising=False)
        client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=120, coalesce_streams=True,
                                         resources={"metadata": {"path": str(work)}})
        t0 = time.perf_counter()
        client.execute()  # raises CellExecutionError on the first failing cell
        seconds = time.perf_counter() - t0
    nbformat.write(nb, work / NOTEBOOK.name)  # left in the temp folder for inspection
    return nb, seconds


def test_notebook_runs_on_the_tiny_model(executed):
    nb, seconds = executed
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
              if out.get("output_type") == "error"]
    assert not errors, f"cell errors: {[e.get('ename') for e in errors]}"
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code"), "a code cell did not run"
    print(f"tiny-model notebook: {seconds:.0f} s")  # a benchmark figure, not a test: no timing assertion
    text = "".join(out.get("text", "") for c in nb.cells if c.cell_type == "code" for out in c.get("outputs", []))
    assert "persona-refusal/tiny" in text, "the notebook did not pick up PERSONA_REFUSAL_NOTEBOOK_MODEL=tiny"


def test_notebook_draws_its_figures(executed):
    nb, _ = executed
    figs = _figures(nb)
    stored = _figures(nbformat.read(NOTEBOOK, as_version=4))
    assert len(figs) >= 3, f"only {len(figs)} figures were drawn"  # selection, gating (first token), gating (judged)
    if stored:  # the same cells draw the same figures on any model
        assert len(figs) == len(stored), f"{len(figs)} figures on the tiny model, {len(stored)} in the stored run"
    for fig in figs:
        assert fig.get("data"), "a figure without traces"
        title = ((fig.get("layout") or {}).get("title") or {}).get("text")
        assert title, "a figure without a title"


def test_notebook_output_is_clean(executed):
    """No warnings or tracebacks in the output; progress bars (tqdm's text fallback) are fine."""
    nb, _ = executed
    stderr = _stderr(nb)
    assert not re.search(r"Warning|Traceback", stderr), f"unexpected stderr output:\n{stderr[:2000]}"


def test_committed_notebook_holds_a_demo_run():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "the committed notebook has cells that were not run"
    outputs = [out for c in code for out in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], "the committed notebook holds an error"
    text = json.dumps([o.get("data", {}).get("text/plain", o.get("text", "")) for o in outputs])
    assert "Qwen2.5-Coder-0.5B-Instruct" in text, "the committed outputs do not come from the demo model"
    assert "RUNTIME_PLACEHOLDER" not in nb.cells[0].source, "the run time of the stored run is not stated"
