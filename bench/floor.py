"""The compute floor of a whole study: how long it would take if every matrix product ran
at this machine's measured peak, and how close the real run comes.

Run ``python bench/floor.py run --preset smoke --out runs/floor-smoke`` (any
``persona-refusal`` command line after the script's own options). The study runs
in-process while a counter counts the floating-point operations of every
matrix product the model does (torch's ``FlopCounterMode``: ``linear``, ``matmul``, einsum,
``mm``, ``bmm`` …, plus oneDNN's ``_linear_pointwise``, the fast decoding path's product:
``2·m·k·n`` each), attributed to
the stage whose timer is running (``run_info.stage_seconds``'s names). It prints, per
stage and in total:

* seconds (measured, counting included: the counter costs a Python call per tensor
  operation, up to a third more time in generation-heavy stages, so compare the floor
  with an uncounted run's ``stage_seconds`` for efficiency ratios),
* TFLOP of matrix products,
* the achieved rate and its ratio to the peak,
* the *floor*: TFLOP / peak, the time these products take at the peak rate, which
  faster code cannot beat without doing fewer of them (element-wise work, tokenising
  and judging only add to it).

The peak is the best of MKL and oneDNN on an MLP-sized product in the run's dtype
(``bench/generation.py``'s ``peak_gflops``), measured before the run. A run's total floor
above a time budget says the budget cannot be met by faster code: only by less work (fewer
prompts, layers or tokens) or a faster machine. Writes ``floor.json`` next to the run's
``results.json``. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from generation import peak_gflops  # noqa: E402

OUTSIDE = "(outside stages)"

_EXTRA = [torch.ops.aten.mv, torch.ops.aten.dot] + (
    [torch.ops.mkldnn._linear_pointwise] if hasattr(torch.ops.mkldnn, "_linear_pointwise") else [])


@register_flop_formula(_EXTRA)
def _contract_last_flops(x_shape, *args, out_shape=None, **kwargs) -> int:
    """``2·k`` per output element, ``k`` the input's last size: matrix-vector and
    vector-vector products (projections onto a direction), which torch's registry leaves
    out, and oneDNN's linear, the fast decoding path's product (its weight may be packed
    into an opaque layout, so the sizes come from the input and the output)."""
    return 2 * x_shape[-1] * math.prod(out_shape)


class ProductCounter(FlopCounterMode):
    """torch's ``FlopCounterMode`` (``mm``, ``addmm``, ``bmm``, ``baddbmm``, attention;
    ``linear``, ``matmul`` and einsum through their decompositions) plus ``mv``, ``dot``
    and oneDNN's linear,
    with the count split by the name in :attr:`stage`."""

    def __init__(self) -> None:
        super().__init__(display=False)
        self.flops: dict[str, int] = defaultdict(int)
        self._stage, self._mark = OUTSIDE, 0

    @property
    def stage(self) -> str:
        return self._stage

    @stage.setter
    def stage(self, name: str) -> None:
        """Book what was counted since the last change to the stage that ran, then switch."""
        total = self.get_total_flops()
        if total > self._mark:
            self.flops[self._stage] += total - self._mark
        self._stage, self._mark = name, total

    def __exit__(self, *exc):
        self.stage = self._stage  # book the last stretch
        return super().__exit__(*exc)


def self_check() -> None:
    """The counter counts known products exactly (``F.linear``, ``matmul``, einsum and
    oneDNN's linear; with and without ``torch.inference_mode``, where composite
    operations reach the counter whole)."""
    a, w, x, y = torch.randn(5, 7), torch.randn(3, 7), torch.randn(2, 5, 7), torch.randn(2, 7, 4)
    for inference in (False, True):
        c = ProductCounter()
        with torch.inference_mode(inference), c:
            torch.nn.functional.linear(a, w, torch.zeros(3))
            torch.matmul(x, y)
            torch.einsum("bij,bjk->bik", x, y)
            torch.einsum("...ij,...jk->...ik", x, y)
            try:
                torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")
                dnn = 2 * 5 * 7 * 3
            except Exception:  # noqa: BLE001 - no oneDNN here
                dnn = 0
        want = 2 * 5 * 7 * 3 + 3 * (2 * 2 * 5 * 7 * 4) + dnn
        got = sum(c.flops.values())
        if got != want:
            raise SystemExit(f"bench/floor.py: the product counter counts {got} FLOPs where {want} are done "
                             f"(inference_mode={inference})")


@contextlib.contextmanager
def stages_attributed(counter: ProductCounter):
    """Point the counter at the stage whose timer runs (``RunContext.timer``)."""
    from persona_refusal.study import context

    orig = context.RunContext.timer

    @contextlib.contextmanager
    def timer(self, name):
        prev, counter.stage = counter.stage, name
        try:
            with orig(self, name):
                yield
        finally:
            counter.stage = prev

    context.RunContext.timer = timer
    try:
        yield
    finally:
        context.RunContext.timer = orig


def _run_args(argv: list[str]) -> tuple[str, Path | None]:
    """The command's ``--dtype`` and ``--out``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out")
    got = p.parse_known_args(argv)[0]
    return got.dtype, Path(got.out) if got.out else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], usage="%(prog)s [--repeats N] COMMAND ...")
    ap.add_argument("--repeats", type=int, default=5, help="timings of the peak product (best is kept)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="a persona-refusal command line, e.g. run --preset smoke")
    args = ap.parse_args(argv)
    if not args.command:
        ap.error("give a persona-refusal command, e.g. run --preset smoke --out runs/floor-smoke")
    self_check()
    dtype, out = _run_args(args.command)
    peak = peak_gflops(args.repeats, getattr(torch, dtype))
    print(f"peak {peak:.0f} GFLOP/s ({dtype}, the faster of MKL and oneDNN)", flush=True)

    from persona_refusal.cli import main as cli

    counter = ProductCounter()
    t0 = time.perf_counter()
    with stages_attributed(counter), counter:
        rc = cli(args.command)
    wall = time.perf_counter() - t0
    if rc:
        return rc
    info = json.loads((out / "results.json").read_text())["run_info"] if out else {}
    seconds = dict(info.get("stage_seconds", {}))
    rows = []
    for stage in sorted(set(seconds) | set(counter.flops), key=lambda s: -counter.flops.get(s, 0)):
        tf = counter.flops.get(stage, 0) / 1e12
        s = seconds.get(stage)
        floor = tf * 1e3 / peak
        rows.append({"stage": stage, "seconds": s, "tflop": tf, "floor_seconds": floor,
                     "gflops": tf * 1e3 / s if s else None, "of_peak": floor / s if s else None})
    total_tf = sum(counter.flops.values()) / 1e12
    total = {"stage": "total (wall)", "seconds": wall, "tflop": total_tf, "floor_seconds": total_tf * 1e3 / peak,
             "gflops": total_tf * 1e3 / wall, "of_peak": total_tf * 1e3 / peak / wall}
    print(f"\n{'stage':<22}{'seconds':>9}{'TFLOP':>9}{'GFLOP/s':>9}{'of peak':>9}{'floor s':>9}")
    for r in rows + [total]:
        s = f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"
        g = f"{r['gflops']:.0f}" if r["gflops"] is not None else "-"
        o = f"{r['of_peak']:.2f}" if r["of_peak"] is not None else "-"
        print(f"{r['stage']:<22}{s:>9}{r['tflop']:>9.2f}{g:>9}{o:>9}{r['floor_seconds']:>9.0f}")
    print(f"\nfloor {total['floor_seconds'] / 60:.1f} min at {peak:.0f} GFLOP/s; measured {wall / 60:.1f} min "
          f"({total['of_peak']:.2f} of the peak over the whole run, loading and judging included)")
    if out:
        from persona_refusal.storage import atomic_write_text

        atomic_write_text(out / "floor.json", json.dumps({"peak_gflops": peak, "dtype": dtype, "command": args.command,
                                                          "stages": rows, "total": total}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
