"""Execute the tour notebook in place (outputs stored in the file) and print its run time.

    .venv/bin/python scripts/execute_notebook.py [--model demo] [--timeout 1800]

The kernel is this interpreter, so the notebook sees the installed package. Used to
refresh the committed outputs after a change; the test suite runs a copy on the tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "persona_refusal_tour.ipynb"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    ap.add_argument("--notebook", default=str(NOTEBOOK))
    args = ap.parse_args()
    path = Path(args.notebook)
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "kernels" / "persona-refusal"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "persona_refusal", "language": "python"}))
        os.environ["JUPYTER_PATH"] = tmp
        os.environ["PERSONA_REFUSAL_NOTEBOOK_MODEL"] = args.model
        client = nbclient.NotebookClient(nb, kernel_name="persona-refusal", timeout=args.timeout,
                                         coalesce_streams=True, resources={"metadata": {"path": str(path.parent)}})
        t0 = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - t0
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    tmp_out = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp_out)
    os.replace(tmp_out, path)
    print(f"executed {path.name} on {args.model} in {seconds:.0f} s ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
