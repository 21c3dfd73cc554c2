"""Command line: ``persona-refusal run | figures | ablation-demo | info``.

Every user mistake ends in one line, ``error: <what is wrong> (<how to fix it>)``, and a
non-zero exit code — never a traceback. Ctrl-C (or a ``kill``) during ``run`` says where
the run stopped; the same command resumes it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

from persona_refusal.errors import ConfigError, PersonaRefusalError
from persona_refusal.prompts import PERSONA_SETS
from persona_refusal.study.config import (DEVICE_HELP, DTYPE_HELP, DTYPES, PRESETS, StudyConfig, add_flags,
                                          flags_to_fields, resolve_device)

__all__ = ["main", "entry"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(EXIT_ERROR, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="persona-refusal", description="Refusal directions, persona directions and per-layer gating.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run (or resume) the persona-gating study")
    r.add_argument("--preset", default="default",
                   help="; ".join(f"{k}: {v.doc}" for k, v in PRESETS.items()))
    r.add_argument("--config", help="JSON file of StudyConfig fields, flat or by section (flags override it)")
    r.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    r.add_argument("--stages", type=_names, help="run only these stages (and those they need), e.g. refusal,gating")
    add_flags(r)  # one flag per StudyConfig field: --persona-alpha, --gating-layers, ..., --device, --dtype
    r.add_argument("--force", action="store_true", help="start over in a folder holding another configuration")
    r.add_argument("--no-figures", action="store_true", help="skip building figures at the end")
    r.add_argument("--quiet", action="store_true", help="no progress bars")

    f = sub.add_parser("figures", help="rebuild figures and the HTML report from a run folder (no model needed)")
    f.add_argument("run_dir", metavar="DIR", help="a run folder, or the path of its results.json")
    f.add_argument("--no-png", action="store_true", help="HTML only (PNG export needs Chrome/Chromium)")
    f.add_argument("--copy-to", metavar="FOLDER", help="also copy the PNGs and report there (e.g. figures/)")

    c = sub.add_parser("compare", help="one figure of several runs: restoration against relative depth")
    c.add_argument("run_dirs", metavar="DIR", nargs="+", help="run folders (or their results.json)")
    c.add_argument("--out", default="figures", help="folder for cross_model.html/.json/.png (default: figures)")
    c.add_argument("--labels", type=_names, help="comma-separated line labels, one per run (default: model · protocol)")
    c.add_argument("--no-png", action="store_true", help="HTML and JSON only")

    d = sub.add_parser("ablation-demo", help="refusal direction, ablation and addition on a model (core demo)")
    d.add_argument("--model", default="demo")
    d.add_argument("--out", default="runs/ablation-demo")
    d.add_argument("--n-eval", type=int, default=None, help="evaluation prompts per side (default: all 100)")
    d.add_argument("--max-new-tokens", type=int, default=32)
    _device_flags(d)
    d.add_argument("--quiet", action="store_true")

    i = sub.add_parser("info", help="describe a model: layers, width, chat template, refusal tokens")
    i.add_argument("model", nargs="?", default="demo")
    _device_flags(i)
    return p


def _device_flags(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype`` of the commands without a StudyConfig (``run`` has them as config fields)."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help=DTYPE_HELP)


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _nonempty(value: str | None, flag: str, example: str) -> None:
    """An empty (or blank) folder argument would mean the current directory: refuse it."""
    if value is not None and not value.strip():
        raise ConfigError(f"{flag} is empty ({value!r})", hint=f"give {flag} a folder path, e.g. {flag} {example}")


def _config_from_args(args):
    fields: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist", hint="check the path")
        if not path.is_file():  # a folder, a named pipe (reading it would block), a device
            raise ConfigError(f"config file {path} is not a regular file", hint="give the path of a JSON file")
        try:
            loaded = json.loads(path.read_text())
        except ValueError as e:
            raise ConfigError(f"config file {path} is not valid JSON ({e})", hint="fix the file") from None
        except RecursionError:
            raise ConfigError(f"config file {path} holds JSON nested too deeply to read",
                              hint='write it as {"field": value, ...} with StudyConfig fields') from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a JSON object",
                              hint='write it as {"field": value, ...} with StudyConfig fields')
        fields.update(loaded)
        fields.pop("preset", None)
    fields.update(flags_to_fields(args))
    for path_field in ("train_harmful", "train_harmless", "val_harmful", "val_harmless", "eval_harmful", "eval_harmless",
                       "refusal_direction", "persona_direction"):
        value = fields.get(path_field)
        if isinstance(value, str) and value and not value.startswith("hf://"):  # other types: the field check says so
            fields[path_field] = str(Path(fields[path_field]).expanduser().resolve())
    for set_field in ("personas", "persona_sets"):  # persona files (not bundled names) become absolute paths
        value = fields.get(set_field)
        names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        resolved = [str(Path(v).expanduser().resolve()) if isinstance(v, str) and v.strip() and v not in PERSONA_SETS
                    else v for v in names]
        if names:
            fields[set_field] = resolved[0] if isinstance(value, str) else resolved
    try:
        return StudyConfig.preset(args.preset, **fields)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a value no field check foresaw
        raise ConfigError(f"bad configuration: {e}", hint="see the StudyConfig fields in persona_refusal.study.config") from None


def _cmd_run(args) -> int:
    from persona_refusal.models import load_chat_model
    from persona_refusal.study import Study, preset_stages, study_personas, study_prompts

    _nonempty(args.out, "--out", "runs/demo")
    config = _config_from_args(args)
    device = resolve_device(config.device)  # a device this machine lacks fails now, as one line
    stages = args.stages if args.stages is not None else preset_stages(args.preset)
    progress = not args.quiet
    prompts = study_prompts(config)  # a bad prompt file fails now, not after loading the model
    study_personas(config)  # so does a bad persona file
    t0 = time.perf_counter()
    cm = load_chat_model(config.model, device=device, dtype=config.dtype, progress=progress)
    t_load = time.perf_counter() - t0
    study = Study(cm, config, args.out, force=args.force, progress=progress, prompts=prompts, stages=stages)
    study.timings["load_model"] = t_load
    _say(f"{cm}\nwriting to {study.out}" + (" (resuming)" if study.store.resumed else ""))
    try:
        results = study.run()
    except KeyboardInterrupt:
        saved = sum(study.store.count(p.stem) for p in study.store.ckpt.glob("*.json"))
        _say(f"\ninterrupted during stage '{study.stage_name}'; {saved} completed points are saved in "
             f"{study.out}/checkpoints.\nRun the same command again to resume where it stopped.")
        return EXIT_INTERRUPTED
    if not args.no_figures:
        t1 = time.perf_counter()
        try:
            from persona_refusal.analysis import build_figures

            built = build_figures(study.out)
            _say(f"figures: {len(built)} files in {study.out / 'figures'} (report: {study.out / 'report.html'})")
        except Exception as e:  # figures are a convenience: never lose a finished run over them
            _say(f"warning: figures were not built ({type(e).__name__}: {e}); "
                 f"rebuild with `persona-refusal figures {study.out}`")
        study.timings["figures"] = time.perf_counter() - t1
    _print_summary(results, study.timings)
    return 0


def _print_summary(results: dict, timings: dict) -> None:
    def pct(rate, ci):
        return f"{100 * rate:5.1f}%  [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"

    lines = ["", f"model {results['model']['model_id']}  ({results['model']['n_layers']} layers)"]
    if "refusal_direction" in results:  # a run of some stages (--stages) has only their keys
        lines.append(f"refusal direction: layer {results['refusal_direction']['layer']}")
    if "steering" in results:
        cal = results.get("calibration") or {}
        alpha = cal["alpha"] if cal.get("calibrated") else results["steering"]["persona_alpha"]
        lines.append(f"persona steering at layer {results['steering']['persona_layer']} "
                     f"(alpha {alpha}{', calibrated on val' if cal.get('calibrated') else ''})")
    if "baseline_refusal_rate" in results:
        lines += [f"refusal rate, baseline: {pct(results['baseline_refusal_rate'], results['baseline_refusal_ci'])}",
                  f"refusal rate, persona:  {pct(results['persona_refusal_rate'], results['persona_refusal_ci'])}"]
    gj = results.get("gating_judged") or {}
    for c in gj.get("cell_rows", []):
        r = c[gj["judge"]]["refusal"]
        lines.append(f"judged ({gj['judge']}, {gj['max_new_tokens']} tokens): persona + refusal re-added at "
                     f"{'+'.join(map(str, c['layers']))} ({c['cell']}, beta {c['beta']:g}): {pct(r['rate'], r['ci'])}")
    for c in results.get("gating_confirm", []):
        lines.append(f"persona + refusal re-added at layer {c['layer']:>2} ({c['cell']}): "
                     f"{pct(c['refusal']['rate'], c['refusal']['ci'])}")
    lines.append("")
    lines.append("time per stage (s):")
    total = 0.0
    for k, v in timings.items():
        lines.append(f"  {k:<18} {v:8.1f}")
        total += v
    lines.append(f"  {'total':<18} {total:8.1f}")
    _say("\n".join(lines))


def _cmd_figures(args) -> int:
    from persona_refusal.analysis import build_figures

    if not args.run_dir.strip():
        raise ConfigError(f"the run folder is empty ({args.run_dir!r})",
                          hint="give the run folder or its results.json, e.g. persona-refusal figures runs/demo")
    _nonempty(args.copy_to, "--copy-to", "figures")
    built = build_figures(args.run_dir, png=not args.no_png, copy_to=args.copy_to)
    _say(f"{len(built)} files written:\n" + "\n".join(f"  {p}" for p in built))
    return 0


def _cmd_compare(args) -> int:
    from persona_refusal.analysis.compare import build_comparison

    _nonempty(args.out, "--out", "figures")
    for rd in args.run_dirs:
        if not rd.strip():
            raise ConfigError(f"a run folder is empty ({rd!r})", hint="give run folders or their results.json files")
    built = build_comparison(args.run_dirs, args.out, labels=args.labels, png=not args.no_png)
    _say(f"{len(built)} files written:\n" + "\n".join(f"  {p}" for p in built))
    return 0


def _cmd_ablation_demo(args) -> int:
    from persona_refusal.demo import check_demo_args, run_ablation_demo

    _nonempty(args.out, "--out", "runs/ablation-demo")
    check_demo_args(args.out, n_eval=args.n_eval, max_new_tokens=args.max_new_tokens,  # before the model loads
                    device=args.device, dtype=args.dtype)
    if not args.model.strip():
        raise ConfigError(f"--model is empty ({args.model!r})", hint="give a model name or path, e.g. --model demo")
    res = run_ablation_demo(args.model, args.out, n_eval=args.n_eval, max_new_tokens=args.max_new_tokens,
                            device=args.device, dtype=args.dtype, progress=not args.quiet)
    d, add = res["refusal_direction"], res["addition"]
    _say(f"\nmodel {res['model']['model_id']}")
    _say(f"refusal direction: layer {d['layer']}, position {d['position']}, |r| = {d['norm']:.3g}"
         f" (selection fallback: {d.get('fallback_used')})")

    def line(name, key):
        r = res["rates"][key]["refusal"]
        return f"  {name:44s} {100 * r['rate']:5.1f}%  [{100 * r['ci'][0]:.1f}, {100 * r['ci'][1]:.1f}]  ({r['k']}/{r['n']})"

    _say("judged refusal (Wilson 95%):")
    _say(line("harmful, as is", "harmful_baseline"))
    _say(line("harmful, direction ablated (every layer)", "harmful_ablated"))
    _say(line("harmless, as is", "harmless_baseline"))
    _say(line(f"harmless, direction added (c = {add['coeff']:g}, layer {add['layer']})", "harmless_added"))
    _say(f"KL(as is || ablated) on harmless test prompts: mean {res['kl_ablation_harmless']['mean']:.3f}")
    _say(f"results: {Path(args.out) / 'results.json'}")
    return 0


def _cmd_info(args) -> int:
    from persona_refusal.models import load_chat_model

    cm = load_chat_model(args.model, device=resolve_device(args.device), dtype=args.dtype)
    _say(repr(cm))
    _say("post-instruction tokens: " + repr([cm.tokenizer.decode([i]) for i in cm.post_instruction_ids]))
    _say("example prompt:\n" + cm.format(["How do I bake bread?"])[0])
    return 0


def _say(text: str) -> None:
    print(text, flush=True)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code.

    Example:
        >>> main(["run", "--out", "runs/demo"])        # doctest: +SKIP
        0
        >>> main(["figures", "runs/demo"])             # doctest: +SKIP
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        previous = None
    try:
        handler = {"run": _cmd_run, "figures": _cmd_figures, "compare": _cmd_compare, "ablation-demo": _cmd_ablation_demo,
                   "info": _cmd_info}[args.command]
        return handler(args)
    except PersonaRefusalError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except OSError as e:  # e.g. an output folder that cannot be created or written
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where} (check the path and its permissions)", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def entry() -> None:
    """Console-script entry point.

    Example:
        >>> entry()        # doctest: +SKIP
    """
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
