"""Check what a user installs: build a wheel, install it (not editable) into a fresh virtual
environment, import every module of the source tree from it, and start every subcommand's
``--help``.

Run by ``scripts/test.sh`` (README command 2, hence CI) before the test suite::

    python scripts/check_wheel.py            # build, install, check; exit 1 on any failure
    python scripts/check_wheel.py --keep DIR # keep the wheel and the venv in DIR

The module list comes from the checkout (every ``.py`` file under ``persona_refusal/`` and
``analysis/``, the latter installing as ``persona_refusal.analysis``), not from the installed
package, so a module the wheel leaves out is reported, not silently skipped. The checks run
with the venv's own interpreter from an empty working directory, so nothing is imported from
the checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH = os.environ.get("PERSONA_REFUSAL_TORCH", "torch==2.13.0")  # the CPU wheel (README: Install)


def source_modules(root: Path = ROOT) -> list[str]:
    """Every importable module of the source tree, by its installed name."""
    mods = []
    for top, name in (("persona_refusal", "persona_refusal"), ("analysis", "persona_refusal.analysis")):
        base = root / top
        for f in sorted(base.rglob("*.py")):
            rel = f.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods.append(".".join([name, *parts]))
    return sorted(set(mods))


def data_files(root: Path = ROOT) -> list[str]:
    """Every data file the package ships (``persona_refusal/data/``), relative to the package."""
    base = root / "persona_refusal"
    return sorted(str(f.relative_to(base)) for f in (base / "data").rglob("*") if f.is_file())


CHECK = r"""
import importlib, json, subprocess, sys, os
mods, data = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sub, bad = [], []
import persona_refusal
pkg = os.path.dirname(persona_refusal.__file__)
bad += [f"data file {f} is not in the wheel" for f in data if not os.path.isfile(os.path.join(pkg, f))]
for m in mods:
    try:
        mod = importlib.import_module(m)
    except Exception as e:  # report every failure, not only the first
        bad.append(f"import {m}: {type(e).__name__}: {e}")
        continue
    if "site-packages" not in (getattr(mod, "__file__", "") or ""):
        bad.append(f"import {m}: came from {mod.__file__}, not the installed wheel")
try:
    from persona_refusal.cli import build_parser
    p = build_parser()
    sub = sorted(next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction").choices)
except Exception as e:
    bad.append(f"cli parser: {type(e).__name__}: {e}")
exe = os.path.join(os.path.dirname(sys.executable), "persona-refusal")
for args in [["--help"], *[[s, "--help"] for s in sub]]:
    r = subprocess.run([exe, *args], capture_output=True, text=True)
    if r.returncode != 0 or "usage:" not in r.stdout:
        bad.append(f"persona-refusal {' '.join(args)}: exit {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}")
print(json.dumps({"modules": len(mods), "data": len(data), "subcommands": sub, "failures": bad}))
"""


def copy_sources(dest: Path) -> None:
    """The files git would commit (tracked, and untracked but not ignored) copied to ``dest``:
    the wheel is built from what a clone holds, never from a stale build/ folder."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    if dest.exists():
        shutil.rmtree(dest)
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", metavar="DIR", help="build and install into DIR and keep it (default: a temporary folder)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pr-wheel-") as tmp:
        work = Path(args.keep).resolve() if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        dist, venv, cwd = work / "dist", work / "venv", work / "cwd"
        cwd.mkdir(exist_ok=True)
        quiet = ["-q", "--disable-pip-version-check"]
        src = work / "src"
        copy_sources(src)
        print("check_wheel: building the wheel", flush=True)
        run([sys.executable, "-m", "pip", "wheel", *quiet, "--no-deps", "-w", str(dist), str(src)])
        wheels = sorted(dist.glob("persona_refusal-*.whl"))
        if not wheels:
            print("check_wheel: no wheel was built", file=sys.stderr)
            return 1
        print(f"check_wheel: installing {wheels[-1].name} into a fresh virtual environment", flush=True)
        run([sys.executable, "-m", "venv", "--clear", str(venv)])
        py = str(venv / "bin" / "python")
        run([py, "-m", "pip", "install", *quiet, TORCH])
        run([py, "-m", "pip", "install", *quiet, str(wheels[-1])])
        mods = source_modules()
        out = subprocess.run([py, "-c", CHECK, json.dumps(mods), json.dumps(data_files())], cwd=cwd, capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        if out.returncode != 0:
            print(f"check_wheel: the check itself failed:\n{out.stderr[-2000:]}", file=sys.stderr)
            return 1
        res = json.loads(out.stdout.strip().splitlines()[-1])
        for line in res["failures"]:
            print(f"check_wheel: FAIL {line}", file=sys.stderr)
        print(f"check_wheel: {res['modules']} modules imported, {res['data']} data files present, {len(res['subcommands']) + 1} --help pages "
              f"({', '.join(res['subcommands'])}): {'FAILED' if res['failures'] else 'ok'}", flush=True)
        return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
