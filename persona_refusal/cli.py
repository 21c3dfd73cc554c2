"""Command line: ``persona-refusal run | refusal | figures | compare | ablation-demo | agreement | judge-check |
export-model | export-vector | import-vector | info``.

Every user mistake ends in one line, ``error: <what is wrong> (<how to fix it>)``, and a
non-zero exit code — never a traceback. Ctrl-C (or a ``kill``) during ``run`` says where
the run stopped; the same command resumes it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

from persona_refusal.errors import ConfigError, PersonaRefusalError
from persona_refusal.prompts import PERSONA_SETS
from persona_refusal.results import RefusalResults
from persona_refusal.storage import check_fields, check_output, read_user_json
from persona_refusal.study.config import (DEVICE_HELP, DTYPE_HELP, DTYPES, SectionedConfig, add_flags, flags_to_fields,
                                          resolve_device)
from persona_refusal.study.gating import StudyConfig
from persona_refusal.study.refusal.config import RefusalConfig

__all__ = ["main", "entry"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(EXIT_ERROR, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="persona-refusal", description="Refusal directions, persona directions and per-layer gating.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _study_parser(sub, "run", "run (or resume) the persona-gating study", StudyConfig, "runs/demo", "refusal,gating")
    _study_parser(sub, "refusal", "run (or resume) the refusal-direction study: the refusal-vs-KL front over every "
                  "candidate, the selection rules, ablation vs ACE vs addition on the test split", RefusalConfig,
                  "runs/refusal", "front,select")

    f = sub.add_parser("figures", help="rebuild figures and the HTML report from a run folder (no model needed)")
    f.add_argument("run_dir", metavar="DIR", help="a run folder, or the path of its results.json")
    f.add_argument("--no-png", action="store_true", help="HTML only (PNG export needs Chrome/Chromium)")
    f.add_argument("--copy-to", metavar="FOLDER", help="also copy the PNGs and report there (e.g. figures/)")

    c = sub.add_parser("compare", help="one figure of several runs: restoration against relative depth")
    c.add_argument("run_dirs", metavar="DIR", nargs="+", help="run folders (or their results.json)")
    c.add_argument("--out", default="figures", help="folder for cross_model.html/.json/.png (default: figures)")
    c.add_argument("--labels", type=_names, help="comma-separated line labels, one per run (default: model · protocol)")
    c.add_argument("--no-png", action="store_true", help="HTML and JSON only")

    a = sub.add_parser("agreement", help="agreement between judges (first-token proxy, phrase judges, a model judge) "
                                         "on the replies stored in a run folder: DIR/judge_agreement.json and .md")
    a.add_argument("run_dir", metavar="DIR", help="a run folder (persona-refusal run --out DIR)")
    a.add_argument("--judge", action="append", default=[], metavar="NAME",
                   help="also label the stored replies with this judge, e.g. model or model:tiny (repeatable; "
                        "its labels are cached next to the output)")
    a.add_argument("--out", metavar="FILE", help="the JSON record to write (default DIR/judge_agreement.json; "
                                                 "the .md table goes next to it)")
    _device_flags(a)  # of a model judge
    a.add_argument("--stages", type=_names, help="only these judged stages, e.g. eval,confirm (a model judge costs "
                   "about a second per reply on a CPU)")
    a.add_argument("--quiet", action="store_true", help="no progress bars")

    jc = sub.add_parser("judge-check", help="judges against the bundled hand-labelled replies (or a .jsonl of your own)")
    jc.add_argument("--judge", action="append", default=[], metavar="NAME",
                    help="a judge to check (repeatable; default strict and lenient): strict, keyword, lenient, model, "
                    "model:NAME")
    jc.add_argument("--cases", metavar="FILE.jsonl", help="hand-labelled replies: one JSON object per line with "
                    "instruction, reply, label (refusal|compliance|degenerate)")
    jc.add_argument("--out", metavar="FILE", help="also write the record as JSON")
    _device_flags(jc)
    jc.add_argument("--quiet", action="store_true", help="no progress bars")

    d = sub.add_parser("ablation-demo", help="refusal direction, ablation and addition on a model (core demo); "
                                             "checkpointed: the same command resumes after Ctrl-C")
    d.add_argument("--model", default="demo")
    d.add_argument("--preset", default="default", help="default: every bundled prompt (128 train / 32 val / 100 test "
                   "per side, 32-token replies, every layer a candidate); smoke: 32 / 4 / 4, 16-token replies, "
                   "4 candidate layers (flags override it)")
    d.add_argument("--out", default="runs/ablation-demo")
    d.add_argument("--n-train", type=int, default=None, help="train prompts per side (default: all 128)")
    d.add_argument("--n-val", type=int, default=None, help="val prompts per side, for selection and the baseline "
                   "check (default: all 32)")
    d.add_argument("--n-eval", type=int, default=None, help="evaluation prompts per side (default: all 100)")
    d.add_argument("--max-new-tokens", type=int, default=None, help="reply length (default: 32)")
    d.add_argument("--n-candidates", type=int, default=None, help="select among this many candidate layers, evenly "
                   "spaced from 30%% to 60%% of the depth (default: every layer)")
    _chat_template_flag(d)
    d.add_argument("--force", action="store_true", help="start over in a folder holding another configuration "
                   "(removes only what a run wrote there)")
    d.add_argument("--judge", default="strict", help="the judge of the rates: strict (default; alias keyword), lenient, "
                   "model (= model:demo-1.5b) or model:NAME (a model name or path, loaded beside the demo's)")
    _device_flags(d)
    d.add_argument("--quiet", action="store_true")

    i = sub.add_parser("info", help="describe a model: layers, width, TransformerLens configuration, decoding path, "
                                    "chat template, refusal tokens")
    i.add_argument("model", nargs="?", default=None, metavar="MODEL", help="the model (or give --model)")
    i.add_argument("--model", dest="model_flag", metavar="MODEL", help="demo (default), demo-1.5b, tiny, a .gguf file, "
                   "a Hugging Face folder or a hub name")
    _chat_template_flag(i)
    _device_flags(i)

    em = sub.add_parser("export-model", help="write a Hugging Face folder of a model with a direction projected out "
                        "of its weights (orthogonalisation)")
    em.add_argument("--model", default="demo", help="demo, demo-1.5b, a .gguf file or a Hugging Face folder (local)")
    em.add_argument("--direction", required=True, metavar="PATH", help="a saved Direction (NAME, NAME.json or "
                    "NAME.safetensors) made with this model")
    em.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder, or a previous export's")
    em.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="dtype of the written weights (default float32)")
    em.add_argument("--allow-transfer", action="store_true", help="accept a direction made with another model of "
                    "the same width")
    em.add_argument("--quiet", action="store_true")

    ev = sub.add_parser("export-vector", help="write a saved direction as a llama.cpp control vector (GGUF)")
    ev.add_argument("direction", metavar="DIRECTION_FILE", help="a saved Direction or LayerDirections (NAME, NAME.json "
                    "or NAME.safetensors)")
    ev.add_argument("--out", required=True, metavar="FILE.gguf", help="the control-vector file to write")
    ev.add_argument("--scale", type=float, default=1.0, help="write scale x vector (default 1: the raw vector)")
    ev.add_argument("--unit", action="store_true", help="write scale x the unit vector instead")
    ev.add_argument("--layers", help="package layers (resid_pre, 2 or above) to write, e.g. 8,12-16 (default: a "
                    "Direction's own layer; every layer of LayerDirections from 2 on)")
    ev.add_argument("--model-hint", help="llama.cpp architecture name recorded in the file, e.g. qwen2 (default: "
                    "--model's architecture)")
    ev.add_argument("--model", help="check the direction against this model (width, identity, layers) and take the "
                    "model hint from it")
    ev.add_argument("--allow-transfer", action="store_true", help="with --model: accept a direction made with another "
                    "model of the same width")
    iv = sub.add_parser("import-vector", help="read a llama.cpp control vector (GGUF) as LayerDirections")
    iv.add_argument("vector", metavar="FILE.gguf", help="a control-vector GGUF file (this package's, repeng's, ...)")
    iv.add_argument("--out", required=True, metavar="DIR_OR_FILE",
                    help="a folder (saves FOLDER/<file stem>.json + .safetensors) or NAME")
    iv.add_argument("--model", help="check the vectors against this model (width, layers)")
    iv.add_argument("--allow-transfer", action="store_true", help="with --model: accept vectors made with another "
                    "model of the same width")
    return p


def _study_parser(sub, name: str, help_text: str, config: type[SectionedConfig], out: str, example: str) -> None:
    """The subcommand of one study: a preset, a config file, the output folder, a subset of
    stages, and one flag per field of its configuration (``config``)."""
    r = sub.add_parser(name, help=help_text)
    r.add_argument("--preset", default=None, help="; ".join(f"{k}: {v.doc}" for k, v in config.PRESETS.items())
                   + " (default: the config file's \"preset\", else default)")
    r.add_argument("--config", help=f"JSON file of {config.__name__} fields, flat or by section (flags override it)")
    r.add_argument("--out", default=out, help=f"output folder (default: {out})")
    r.add_argument("--stages", type=_names, help=f"run only these stages (and those they need), e.g. {example}")
    add_flags(r, config)  # one flag per field: --persona-alpha, --front-layers, ..., --device, --dtype
    r.add_argument("--force", action="store_true", help="start over in a folder holding another configuration")
    r.add_argument("--no-figures", action="store_true", help="skip building figures at the end")
    r.add_argument("--quiet", action="store_true", help="no progress bars")


def _chat_template_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template file, for a model without one "
                        "(a base model)")


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


def _config_from_args(args, config: type[SectionedConfig] = StudyConfig):
    fields: dict = {}
    preset = args.preset
    if args.config is not None:
        if not str(args.config).strip():
            raise ConfigError(f"--config is empty ({args.config!r})", hint="give the path of a JSON file")
        path = Path(args.config)
        shape = f'write it as {{"field": value, ...}} with {config.__name__} fields'
        loaded = read_user_json(path, what="config file", hint=shape)
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a JSON object", hint=shape)
        check_fields(loaded, {"preset": str}, where=f"config file {path}", hint=shape)
        fields.update(loaded)
        named = fields.pop("preset", None)
        if named is not None:
            if named not in config.PRESETS:
                raise ConfigError(f"config file {path}: unknown preset {named!r}",
                                  hint=f"use one of {sorted(config.PRESETS)}, or leave \"preset\" out")
            if preset is None:
                preset = named
    args.preset = preset if preset is not None else "default"
    fields.update(flags_to_fields(args, config))
    for path_field in [n for n in config.field_names() if config.check_of(n).kind == "path"]:
        value = fields.get(path_field)
        if isinstance(value, str) and value and not value.startswith("hf://"):  # other types: the field check says so
            fields[path_field] = str(Path(fields[path_field]).expanduser().resolve())
    judge = fields.get("judge")  # a judge model given as a path becomes an absolute one (a run resumes from anywhere)
    if isinstance(judge, str) and judge.startswith("model:") and judge[6:].strip() \
            and Path(judge[6:].strip()).expanduser().exists():
        fields["judge"] = "model:" + str(Path(judge[6:].strip()).expanduser().resolve())
    for set_field in ("personas", "persona_sets"):  # persona files (not bundled names) become absolute paths
        value = fields.get(set_field)
        names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        resolved = [str(Path(v).expanduser().resolve()) if isinstance(v, str) and v.strip() and v not in PERSONA_SETS
                    else v for v in names]
        if names:
            fields[set_field] = resolved[0] if isinstance(value, str) else resolved
    try:
        return config.preset(args.preset, **fields)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a value no field check foresaw
        raise ConfigError(f"bad configuration: {e}",
                          hint=f"see the {config.__name__} fields in {config.__module__}") from None


def _cmd_run(args) -> int:
    from persona_refusal.study import study_personas, study_prompts

    def read_inputs(config):
        prompts = study_prompts(config)  # a bad prompt file fails now, not after loading the model
        study_personas(config)  # so does a bad persona file
        return prompts

    return _run_study(args, StudyConfig, read_inputs, "runs/demo")


def _cmd_refusal(args) -> int:
    from persona_refusal.study.refusal import refusal_prompts

    return _run_study(args, RefusalConfig, refusal_prompts, "runs/refusal")


def _run_study(args, config_cls: type[SectionedConfig], read_inputs, out_example: str) -> int:
    """Run (or resume) the study of ``config_cls`` as its subcommand's arguments say: every
    input is read and checked before the model loads; Ctrl-C says where the run stopped."""
    from persona_refusal.evaluation import ModelJudge, get_judge
    from persona_refusal.models import load_chat_model
    from persona_refusal.study import Study, preset_stages

    _nonempty(args.out, "--out", out_example)
    config = _config_from_args(args, config_cls)
    device = resolve_device(config.device)  # a device this machine lacks fails now, as one line
    stages = args.stages if args.stages is not None else preset_stages(args.preset, config_cls)
    progress = not args.quiet
    prompts = read_inputs(config)
    judge = get_judge(config.judge)  # lazy: nothing is loaded
    if isinstance(judge, ModelJudge):
        judge.check()  # a judge model that is not installed or does not exist fails now, not after the model loads
    t0 = time.perf_counter()
    cm = load_chat_model(config.model, device=device, dtype=config.dtype, progress=progress, decode=config.decode,
                         chat_template=config.chat_template)
    t_load = time.perf_counter() - t0
    study = Study(cm, config, args.out, force=args.force, progress=progress, prompts=prompts, stages=stages)
    study.timings["load_model"] = t_load
    study.warn = lambda text: _say(f"warning: {text}")  # as soon as the baseline check knows
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
    lines = [""] + [f"{k}: {v}" for k, v in results.rows()] if isinstance(results, RefusalResults) else \
        _gating_lines(results)
    warning = (results.get("refusal_baseline") or {}).get("warning")
    if warning:
        lines.append(f"warning: {warning}")
    lines.append("")
    lines.append("time per stage (s):")
    total = 0.0
    for k, v in timings.items():
        lines.append(f"  {k:<18} {v:8.1f}")
        total += v
    lines.append(f"  {'total':<18} {total:8.1f}")
    _say("\n".join(lines))


def _gating_lines(results: dict) -> list[str]:
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
    return lines


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


def _cmd_agreement(args) -> int:
    from persona_refusal.agreement import judge_agreement, kappa_text, output_paths

    paths = output_paths(args.run_dir, args.out)  # an empty --out fails here, an empty DIR in judge_agreement
    rec = judge_agreement(args.run_dir, args.judge, out=args.out, progress=not args.quiet, stages=args.stages,
                          judge_options={"device": resolve_device(args.device), "dtype": args.dtype})
    _say(f"{rec['n_items']} replies in {rec['n_conditions']} judged conditions; raters: "
         + ", ".join(r["name"] for r in rec["raters"]))
    for p in rec["pairs"]:
        agree = p["agreement"]
        _say(f"  {p['a']:>12} vs {p['b']:<12} {p['scale']:<6}  agreement {100 * agree['rate']:5.1f}% "
             f"({agree['k']}/{agree['n']})  kappa {kappa_text(p)}")
    _say(f"written: {paths['json']}, {paths['md']}")
    return 0


def _cmd_judge_check(args) -> int:
    from persona_refusal.agreement import judge_check, kappa_text, labelled_replies
    from persona_refusal.evaluation import get_judge, judge_name
    from persona_refusal.storage import write_json

    if args.out is not None:
        _nonempty(args.out, "--out", "judge_check.json")
        check_output(args.out, ours=_judge_check_record, writer="persona-refusal judge-check",
                     example="judge_check.json")
    cases = labelled_replies(args.cases)  # a bad file fails before a judge model loads
    names = list(dict.fromkeys(judge_name(j) for j in (args.judge or ["strict", "lenient"])))
    judges = {n: get_judge(n, device=resolve_device(args.device), dtype=args.dtype, progress=not args.quiet)
              for n in names}
    for j in judges.values():
        if callable(getattr(j, "check", None)):
            j.check()
    rec = judge_check(judges, cases)
    _say(f"{rec['n']} hand-labelled replies: " + ", ".join(f"{v} {k}" for k, v in rec["labels"].items()))
    for name, r in rec["judges"].items():
        for scale in ("three_way", "binary"):
            a = r[scale]["agreement"]
            _say(f"  {name:<18} {scale.replace('_', '-'):<9} agrees {100 * a['rate']:5.1f}% ({a['k']}/{a['n']}, "
                 f"[{100 * a['ci'][0]:.0f}, {100 * a['ci'][1]:.0f}])  kappa {kappa_text(r[scale])}")
        for w in r["wrong"]:
            _say(f"      wrong: {w['label']} judged {w['judge']}: {(w.get('note') or w['reply'][:60])}")
    if args.out is not None:
        write_json(Path(args.out), {"format": JUDGE_CHECK_FORMAT, **rec})
        _say(f"written: {args.out}")
    return 0


JUDGE_CHECK_FORMAT = "persona_refusal.judge_check/1"
"""The ``format`` of the record ``judge-check --out`` writes (it replaces only such a file)."""


def _judge_check_record(path: Path) -> bool:
    data = read_user_json(path, what="judge-check record")
    return isinstance(data, dict) and data.get("format") == JUDGE_CHECK_FORMAT


def _cmd_ablation_demo(args) -> int:
    from persona_refusal.demo import DEMO_PRESETS, check_demo_args, run_ablation_demo

    _nonempty(args.out, "--out", "runs/ablation-demo")
    if args.preset not in DEMO_PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r}", hint=f"use one of {', '.join(sorted(DEMO_PRESETS))}")
    sizes = {**{"max_new_tokens": 32}, **DEMO_PRESETS[args.preset]}
    for name in ("n_train", "n_val", "n_eval", "max_new_tokens", "n_candidates"):
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    check_demo_args(args.out, **sizes, device=args.device, dtype=args.dtype, judge=args.judge)  # before the model loads
    if not args.model.strip():
        raise ConfigError(f"--model is empty ({args.model!r})", hint="give a model name or path, e.g. --model demo")
    try:
        res = run_ablation_demo(args.model, args.out, **sizes, device=args.device, dtype=args.dtype, judge=args.judge,
                                progress=not args.quiet, force=args.force, chat_template=args.chat_template,
                                warn=lambda text: _say(f"warning: {text}"))
    except KeyboardInterrupt:
        _say(f"\ninterrupted; the completed steps are saved in {args.out}/checkpoints.\n"
             "Run the same command again to resume where it stopped.")
        return EXIT_INTERRUPTED
    d, add = res["refusal_direction"], res["addition"]
    _say(f"\nmodel {res['model']['model_id']}")
    _say(f"refusal direction: layer {d['layer']}, position {d['position']}, |r| = {d['norm']:.3g}"
         f" (selection fallback: {d.get('fallback_used')})")

    def line(name, key):
        r = res["rates"][key]["refusal"]
        return f"  {name:44s} {100 * r['rate']:5.1f}%  [{100 * r['ci'][0]:.1f}, {100 * r['ci'][1]:.1f}]  ({r['k']}/{r['n']})"

    _say(f"judged refusal ({res['judge']} judge, Wilson 95%):")
    _say(line("harmful, as is", "harmful_baseline"))
    _say(line("harmful, direction ablated (every layer)", "harmful_ablated"))
    _say(line("harmless, as is", "harmless_baseline"))
    _say(line(f"harmless, direction added (c = {add['coeff']:g}, layer {add['layer']})", "harmless_added"))
    _say(f"KL(as is || ablated) on harmless test prompts: mean {res['kl_ablation_harmless']['mean']:.3f}")
    if res["refusal_baseline"]["warning"]:
        _say(f"warning: {res['refusal_baseline']['warning']}")
    _say(f"results: {Path(args.out) / 'results.json'}")
    return 0


def _cmd_info(args) -> int:
    from persona_refusal.models import load_chat_model

    if args.model is not None and args.model_flag is not None and args.model != args.model_flag:
        raise ConfigError(f"two models given: {args.model!r} and --model {args.model_flag!r}",
                          hint="give the model once, e.g. persona-refusal info --model demo")
    model = args.model_flag if args.model_flag is not None else args.model if args.model is not None else "demo"
    if not model.strip():
        raise ConfigError(f"--model is empty ({model!r})", hint="give a model name or path, e.g. --model demo")
    cm = load_chat_model(model, device=resolve_device(args.device), dtype=args.dtype, chat_template=args.chat_template)
    _say(repr(cm))
    _say(f"TransformerLens configuration: {cm.tl_config}")
    _say(f"decoding path: {cm.decoding_path}")
    if cm.chat_template_file:
        _say(f"chat template: {cm.chat_template_file}")
    _say("post-instruction tokens: " + repr([cm.tokenizer.decode([i]) for i in cm.post_instruction_ids]))
    _say("example prompt:\n" + cm.format(["How do I bake bread?"])[0])
    return 0


def _cmd_export_vector(args) -> int:
    from persona_refusal.control_vectors import export_control_vector, import_control_vector, parse_layers, read_directions

    if not args.direction.strip():
        raise ConfigError(f"DIRECTION_FILE is empty ({args.direction!r})", hint="give a saved direction, e.g. "
                          "runs/demo/directions/refusal")
    if not args.out.strip():
        raise ConfigError(f"--out is empty ({args.out!r})", hint="give --out the .gguf file to write, e.g. --out refusal.gguf")
    check_output(args.out, ours=lambda p: True, example="refusal.gguf")  # the storage rule, before anything loads
    layers = parse_layers(args.layers) if args.layers is not None else None
    if args.model is not None and not args.model.strip():
        raise ConfigError(f"--model is empty ({args.model!r})", hint="give a model name or path, e.g. --model demo")
    directions = read_directions(args.direction)
    cm = None
    if args.model is not None:
        from persona_refusal.models import load_chat_model

        cm = load_chat_model(args.model)
    path = export_control_vector(directions, args.out, scale=args.scale, unit=args.unit, layers=layers,
                                 model_hint=args.model_hint, model=cm, allow_transfer=args.allow_transfer)
    written = import_control_vector(path)
    _say(f"wrote {path}: layers {list(written.layers)} as direction.{{{','.join(str(l - 1) for l in written.layers)}}}"
         f" (scale {args.scale:g}{', unit vectors' if args.unit else ''})\nuse it with llama.cpp: "
         f"--control-vector-scaled {path}:1")
    return 0


def _cmd_import_vector(args) -> int:
    from persona_refusal.control_vectors import import_control_vector, import_target

    if not args.vector.strip():
        raise ConfigError(f"FILE.gguf is empty ({args.vector!r})", hint="give a control-vector .gguf file")
    target = import_target(args.out, args.vector)
    if args.model is not None and not args.model.strip():
        raise ConfigError(f"--model is empty ({args.model!r})", hint="give a model name or path, e.g. --model demo")
    directions = import_control_vector(args.vector)  # the file's problems first, before a model loads
    if args.model is not None:
        from persona_refusal.models import load_chat_model

        directions.check(load_chat_model(args.model), allow_transfer=args.allow_transfer)
    saved = directions.save(target)
    _say(f"wrote {saved} (+ .safetensors): {directions!r}")
    return 0


def _cmd_export_model(args) -> int:
    from persona_refusal.export import export_orthogonalized

    _nonempty(args.out, "--out", "exports/demo-orthogonalized")
    if not args.model.strip():
        raise ConfigError(f"--model is empty ({args.model!r})", hint="give a model name or path, e.g. --model demo")
    if not args.direction.strip():
        raise ConfigError(f"--direction is empty ({args.direction!r})",
                          hint="give a saved direction, e.g. --direction runs/demo/directions/refusal")
    check_output(args.out, folder=True, example="exports/demo-orthogonalized")  # before the model loads
    t0 = time.perf_counter()
    out = export_orthogonalized(args.model, args.direction, args.out, allow_transfer=args.allow_transfer,
                                dtype=args.dtype, progress=not args.quiet)
    marker = read_user_json(out / "persona_refusal_export.json", what="export marker")
    _say(f"wrote {out} ({time.perf_counter() - t0:.0f} s): {marker['source']['model_id']} with direction "
         f"{marker['direction']['name']!r} projected out of its weights ({args.dtype}"
         f"{'; tied embeddings untied' if marker['untied_embeddings'] else ''})\n"
         f"load it with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
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
        handler = {"run": _cmd_run, "refusal": _cmd_refusal, "figures": _cmd_figures, "compare": _cmd_compare, "ablation-demo": _cmd_ablation_demo,
                   "agreement": _cmd_agreement, "judge-check": _cmd_judge_check,
                   "info": _cmd_info, "export-vector": _cmd_export_vector,
                   "import-vector": _cmd_import_vector, "export-model": _cmd_export_model}[args.command]
        return handler(args)
    except PersonaRefusalError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except OSError as e:  # e.g. an output folder that cannot be created or written
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where} (check the path and its permissions)", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def entry() -> None:
    """Run the CLI and exit with its code (the console script is
    :func:`persona_refusal.console.entry`, which also catches a Ctrl-C during the imports).

    Example:
        >>> entry()        # doctest: +SKIP
    """
    try:
        code = main()
    except KeyboardInterrupt:  # after main's own handler: while it printed, or before it began
        print("interrupted", file=sys.stderr, flush=True)
        code = EXIT_INTERRUPTED
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
