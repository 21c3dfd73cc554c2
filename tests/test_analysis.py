"""analysis: figures and the HTML report, rebuilt from a saved run without a model.

One smoke study on the tiny model (session fixture, a few seconds) feeds every test; the
figures are also drawn from edited copies of its results (several strengths, missing
sections, hostile reply text) to check they degrade gracefully. PNG export is tested only
where a Chrome/Chromium is installed.
"""

from __future__ import annotations

import ast
import copy
import json
import logging
import pkgutil
import re
import shutil
import zlib
from pathlib import Path

import plotly.graph_objects as go
import pytest

import persona_refusal
import persona_refusal.ops
from persona_refusal import analysis
from persona_refusal.analysis import figures as F
from persona_refusal.analysis.figures import FIGURES, STUDY_STAGES, Figure, registry
from persona_refusal.analysis.report import CAPTIONS, headline
from persona_refusal.errors import RunFolderError
from persona_refusal.experiments import load_results
from persona_refusal.formatting import rate_text
from persona_refusal.storage import is_marked_png, mark_png, read_json
from persona_refusal.study.registry import registered
from conftest import run_smoke_study

PACKAGE_DIR = Path(persona_refusal.__file__).resolve().parent
REPO = Path(__file__).resolve().parents[1]
COMMITTED_RUN = REPO / "figures"
"""The committed demo run (``results.json`` only: no selection report)."""
FIGURE_NAMES = ["gating", "gating_judged", "sensitivity", "persona_orthogonal", "outcomes", "calibration", "alpha", "heatmap", "projections", "knockout",
                "patching", "cosine", "persona_sets", "selection"]
"""The gating study's figures in report order (the registry must hold exactly these for it)."""

REFUSAL_FIGURES = ["front", "edits"]
"""The refusal study's figures in report order (tests/test_refusal_study.py draws them)."""

PAPER_FIGURES = ("gating_judged", "sensitivity", "persona_orthogonal", "calibration", "persona_sets")
"""Figures of the paper preset's stages (drawn only when those stages measured something:
tests/test_paper_protocol.py draws them)."""

STUDY_FIGURES = [n for n in FIGURE_NAMES if n not in PAPER_FIGURES]
"""The figures a default (or smoke) run draws, in report order."""


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """A finished smoke study on the tiny model (no figures built in it)."""
    out = tmp_path_factory.mktemp("smoke_run")
    run_smoke_study(out)
    return out


@pytest.fixture(scope="session")
def results(smoke_run) -> dict:
    return load_results(smoke_run)


@pytest.fixture(scope="session")
def selection(smoke_run) -> dict:
    return read_json(smoke_run / "directions" / "refusal_selection.json")


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "figures", "report.html"))
    return dst


MODEL_LOADS: list[str] = []
"""Attempts to load a model while figures were being rebuilt (must stay empty)."""


@pytest.fixture(scope="session")
def built(smoke_run, tmp_path_factory) -> tuple[Path, list[Path], Path]:
    """``build_figures`` (PNG included when a browser exists) on a copy of the run,
    copying to a second folder; done once for the session, with every way of loading a
    model replaced by one that records the attempt and fails."""
    import persona_refusal.models as models

    def forbidden(*args, **kwargs):
        MODEL_LOADS.append(repr(args))
        raise AssertionError("figures must be rebuilt from saved results, without a model")

    run = _copy_run(smoke_run, tmp_path_factory.mktemp("built") / "run")
    dest = tmp_path_factory.mktemp("copy_to")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "load_chat_model", forbidden)
        mp.setattr(persona_refusal, "load_chat_model", forbidden)
        mp.setattr(models.ChatModel, "__init__", forbidden)
        paths = analysis.build_figures(run, png=True, copy_to=dest)
    return run, paths, dest


def _draw_input(fig: Figure, results: dict, selection: dict) -> dict:
    """What ``make_figures`` passes to ``fig.draw``: the results plus the figure's extra files."""
    extra = {"directions/refusal_selection.json": selection}
    return {**results, **{key: extra[path] for key, path in fig.inputs}}


def _all_figures(results: dict, selection: dict) -> dict[str, go.Figure]:
    return {name: fig.draw(_draw_input(fig, results, selection)) for name, fig in FIGURES.items()}


@pytest.fixture(scope="session")
def figs(results, selection) -> dict[str, go.Figure]:
    return _all_figures(results, selection)


def _axis_titles(fig: go.Figure) -> list[str]:
    out = []
    for key in fig.layout.to_plotly_json():
        if re.fullmatch(r"[xy]axis\d*", key):
            t = fig.layout[key].title.text
            if t:
                out.append(t)
    return out


def _names(fig: go.Figure) -> list[str]:
    return [t.name for t in fig.data if t.name]


# ----------------------------------------------------------------------------- figures
EXPECTED = {
    # name: (trace names that must appear (substring), axis titles that must appear (substring))
    "gating": (["persona + refusal re-added, β=2", "control: refusal re-added", "confirmed by generation",
                "baseline (no steering)", "persona only"],
               ["refusal rate (%)", "restoration", "layer where the refusal direction is re-added (resid_pre index)"]),
    "outcomes": (["baseline (no steering)", "persona steering"], ["share of harmful prompts (%)"]),
    "alpha": (["refusal, harmful prompts", "degenerate replies, harmless prompts"],
              ["refusal rate (%)", "strength α (× common norm s)", "share of replies (%)"]),
    "heatmap": ([], ["refusal re-added at layer (resid_pre index)", "persona steering layer"]),
    "projections": (["harmful, no steering", "harmful, persona steering", "harmless, no steering"],
                    ["layer (resid_pre index)", "projection"]),
    "knockout": (["persona direction projected out", "random direction projected out (control)"],
                 ["refusal rate (%)", "layers where the direction is projected out"]),
    "patching": (["all positions, per layer", "one position, layer"],
                 ["normalized patching effect", "layer (resid_pre index) patched", "patched position"]),
    "cosine": (["cos(persona direction, refusal direction)", "random null"], ["cosine similarity", "layer (resid_pre index)"]),
    "selection": (["bypass score", "chosen: layer"], ["bypass score", "candidate layer (resid_pre index)"]),
}


@pytest.mark.parametrize("name", STUDY_FIGURES)
def test_figure_has_expected_traces_and_axes(name, figs, results):
    fig = figs[name]
    assert isinstance(fig, go.Figure)
    assert len(fig.data) > 0
    names, titles = _names(fig), _axis_titles(fig)
    want_traces, want_axes = EXPECTED[name]
    for w in want_traces:
        assert any(w in n for n in names), f"{name}: no trace named like {w!r} in {names}"
    for w in want_axes:
        assert any(w in t for t in titles), f"{name}: no axis titled like {w!r} in {titles}"
    assert fig.layout.title.text and fig.layout.template.layout.font is not None
    assert results["model"]["model_id"] in fig.layout.title.text
    fig.to_json()  # serialisable (what to_html and kaleido do with it)


def test_gating_figure_marks_the_persona_layer_and_regions(results):
    fig = F.gating_figure(results)
    P = results["steering"]["persona_layer"]
    vlines = [s for s in fig.layout.shapes if s.type == "line" and s.x0 == P and s.x1 == P]
    assert len(vlines) == 3  # every panel
    texts = " ".join(a.text or "" for a in fig.layout.annotations)
    assert "early" in texts and "late" in texts
    # the smoke model never refuses: restoration is undefined and the figure says so
    assert all(g["restoration"] is None for g in results["gating"])
    assert "restoration undefined" in texts
    assert f"n = {results['sweep']['n']}" in fig.layout.title.subtitle.text


def test_gating_figure_handles_many_betas_and_defined_restoration(results):
    r = copy.deepcopy(results)
    base = r["gating"]
    r["gating"] = []
    for i, beta in enumerate((1.0, 2.0, 4.0)):
        for g in base:
            g = dict(g, beta=beta, restoration=0.3 * i - 0.2, restoration_ci=[None, None] if i == 0 else [-5.0, 5.0])
            r["gating"].append(g)
    r["gating_control"] += [dict(g, beta=1.0) for g in r["gating_control"]]
    fig = F.gating_figure(r)
    names = _names(fig)
    for beta in ("1", "2", "4"):
        assert f"persona + refusal re-added, β={beta}" in names
    assert sum("control: refusal re-added" in n for n in names) == 2
    rest = [t for t in fig.data if (t.name or "").startswith("restoration, β=")]
    assert len(rest) == 3
    lo, hi = fig.layout.yaxis2.range
    assert -1.0 <= lo and hi <= 2.0  # huge intervals are clipped, not allowed to flatten the panel


@pytest.mark.parametrize("name", [n for n in FIGURE_NAMES if n != "selection"])
def test_figures_survive_missing_sections(name, results):
    fn = analysis.FIGURES[name]
    assert isinstance(fn({}), go.Figure)
    r = copy.deepcopy(results)
    for key in ("gating", "gating_control", "gating_confirm", "heatmap", "knockout", "patching", "projections",
                "cosines", "alpha_sweep", "sweep", "baseline", "persona"):
        r.pop(key, None)
    assert isinstance(fn(r), go.Figure)


def test_figures_handle_none_values(results, selection):
    r = copy.deepcopy(results)
    r["cosines"]["cosine"] = [None] * len(r["cosines"]["cosine"])
    for p in r["patching"]:
        p["score_restoration"], p["score_restoration_ci"] = None, [None, None]
    for rec in r["projections"]["harmful_persona"]:
        rec["ci"] = [None, None]
    r["heatmap"]["refusal_rate"][0][0] = None
    s = copy.deepcopy(selection)
    s["chosen"] = None
    for fn in (F.patching_figure, F.projections_figure, F.heatmap_figure):
        assert isinstance(fn(r), go.Figure), fn.__name__
    assert isinstance(F.selection_figure(s), go.Figure)
    cos = F.cosine_figure(r)
    assert any("undefined" in n for n in _names(cos))
    assert isinstance(analysis.selection_figure({}), go.Figure)


def test_selection_figure_greys_discarded_candidates(selection):
    fig = F.selection_figure(selection)
    hover = " ".join(" ".join(t.hovertext or []) if isinstance(t.hovertext, tuple) else str(t.hovertext or "")
                     for t in fig.data)
    for c in selection["candidates"]:
        if c["discarded"]:
            assert c["discarded"] in hover
    chosen = [t for t in fig.data if (t.name or "").startswith("chosen")]
    assert len(chosen) == 1 and chosen[0].x[0] == selection["chosen"]["layer"]


# ----------------------------------------------------------------------------- registry
def test_registry_holds_the_study_figures_in_report_order():
    assert list(F.figures_of("gating")) == FIGURE_NAMES
    assert list(F.figures_of("refusal")) == REFUSAL_FIGURES
    assert set(FIGURES) == set(FIGURE_NAMES + REFUSAL_FIGURES)
    assert len(set(FIGURES)) == len(FIGURES)
    for name, fig in FIGURES.items():
        assert isinstance(fig, Figure) and fig.name == name and F.get(name) is fig
        stages = STUDY_STAGES if fig.study == "gating" else tuple(registered(fig.study))
        assert fig.stage in stages, f"{name}: unknown stage {fig.stage!r}"
        assert fig.title and fig.caption and "  " not in fig.caption
        w, h = fig.size
        assert isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0
    assert dict(analysis.FIGURE_SIZES) == {n: f.size for n, f in FIGURES.items()}
    assert dict(CAPTIONS) == {n: f.caption for n, f in FIGURES.items()}
    with pytest.raises(KeyError, match="gating"):
        F.get("no_such_figure")


def test_every_figure_module_registers_itself():
    # every module of analysis/figures/ (but the private ones and the registry) is found and
    # registers at least one figure; no figure is drawn by anything else
    modules = {f"{F.__name__}.{m.name}" for m in pkgutil.iter_modules(F.__path__)
               if not m.name.startswith("_") and m.name != "registry"}
    drawn_by = {fig.draw.__module__ for fig in FIGURES.values()}
    assert drawn_by == modules


@pytest.mark.parametrize("name", STUDY_FIGURES)
def test_every_registered_figure_draws_from_the_committed_and_the_tiny_run(name, results, selection):
    fig = FIGURES[name]
    committed = load_results(COMMITTED_RUN)
    for res in (committed, results):
        drawn = fig.draw(_draw_input(fig, res, selection))
        assert isinstance(drawn, go.Figure) and len(drawn.data) > 0, name
        drawn.to_json()


def test_register_rejects_a_second_figure_of_the_same_name():
    clash = Figure(name="gating", title="t", caption="c", size=(10, 10), draw=lambda r: go.Figure(), stage="gating")
    with pytest.raises(ValueError, match="already registered"):
        F.register(clash)
    F.register(FIGURES["gating"])  # the same figure again is a no-op
    assert list(F.figures_of("gating")) == FIGURE_NAMES
    with pytest.raises(ValueError):
        Figure(name="bad name", title="t", caption="c", size=(10, 10), draw=lambda r: go.Figure(), stage="gating")


def test_a_figure_whose_input_file_is_missing_is_left_out(smoke_run, tmp_path):
    run = _copy_run(smoke_run, tmp_path / "run")
    (run / "directions" / "refusal_selection.json").unlink()
    _, figs = analysis.make_figures(run)
    assert list(figs) == [n for n in STUDY_FIGURES if n != "selection"]


@pytest.fixture
def extra_figure():
    """A figure registered for one test (drawn from the results' ``sweep``), removed after it."""
    def draw(results: dict) -> go.Figure:
        return go.Figure(go.Bar(x=["sweep n"], y=[(results.get("sweep") or {}).get("n")], name="sweep size"))

    fig = F.register(Figure(name="extra_check", title="An extra figure", caption="Caption of the extra figure "
                            "(persona layer {P}).", size=(640, 480), draw=draw, stage="gating", order=85))
    try:
        yield fig
    finally:
        F.unregister(fig.name)
    assert "extra_check" not in FIGURES and list(F.figures_of("gating")) == FIGURE_NAMES


def test_a_registered_figure_appears_in_the_build_and_the_report(extra_figure, smoke_run, results, tmp_path):
    run = _copy_run(smoke_run, tmp_path / "run")
    paths = analysis.build_figures(run, png=False)
    assert run / "figures" / "extra_check.html" in paths
    _, figs = analysis.make_figures(run)
    assert list(figs) == STUDY_FIGURES[:-1] + ["extra_check", "selection"]  # order 85: before selection (90)
    text = (run / "report.html").read_text()
    assert 'id="plot-extra_check"' in text and text.count("Plotly.newPlot") == len(STUDY_FIGURES) + 1
    assert "9. An extra figure" in text and "10. How the refusal direction was selected" in text
    assert f"Caption of the extra figure (persona layer {results['steering']['persona_layer']})." in text
    assert analysis.FIGURE_SIZES["extra_check"] == (640, 480)


# ----------------------------------------------------------------------------- files
def test_build_figures_writes_html_and_report(built):
    run, paths, dest = built
    fig_dir = run / "figures"
    for name in STUDY_FIGURES:
        assert (fig_dir / f"{name}.html").is_file(), name
        assert fig_dir / f"{name}.html" in paths
    assert (fig_dir / "plotly.min.js").is_file()
    html = (fig_dir / "gating.html").read_text()
    assert 'src="plotly.min.js"' in html  # the shared local copy, opens offline
    assert (run / "report.html") in paths and (dest / "report.html").is_file()
    assert not list(fig_dir.glob(".*.tmp")) and not list(fig_dir.glob(".png-*"))


def test_build_figures_writes_pngs(built):
    if analysis.find_browser() is None:
        pytest.skip("no Chrome/Chromium: PNG export is not available here")
    run, paths, dest = built
    for name in STUDY_FIGURES:
        png = run / "figures" / f"{name}.png"
        assert png.is_file() and png in paths, name
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and is_marked_png(png)
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == analysis.FIGURE_SIZES[name]
        assert (dest / f"{name}.png").read_bytes() == data


def test_no_browser_skips_pngs_with_one_warning(smoke_run, tmp_path, monkeypatch, caplog):
    run = _copy_run(smoke_run, tmp_path / "run")
    monkeypatch.setattr(analysis, "find_browser", lambda: None)
    with caplog.at_level(logging.WARNING, logger="persona_refusal.analysis"):
        paths = analysis.build_figures(run, png=True, copy_to=tmp_path / "dest")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "PNG" in warnings[0].getMessage()
    assert not list((run / "figures").glob("*.png"))
    assert all(p.suffix != ".png" for p in paths)
    assert (run / "report.html").is_file() and (tmp_path / "dest" / "report.html").is_file()
    assert len(list((run / "figures").glob("*.html"))) == len(STUDY_FIGURES)


def _flaky_writer(drop_times: int):
    """A stand-in for plotly's ``write_images`` that writes tiny PNG files but silently skips
    the first figure of its first ``drop_times`` calls, as kaleido does with a figure that
    timed out (it reports it in a return value that plotly drops)."""
    calls = []

    def write_images(figs, paths, **kwargs):
        calls.append([Path(p).name for p in paths])
        for i, p in enumerate(paths):
            if i == 0 and len(calls) <= drop_times:
                continue
            Path(p).write_bytes(TINY_PNG)
    return write_images, calls


TINY_PNG = b"\x89PNG\r\n\x1a\n" + b"".join(len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
                                      for kind, body in ((b"IHDR", bytes(13)), (b"IEND", b"")))
"""A PNG of a header and an end chunk: what the stand-in for kaleido writes."""


def test_copy_to_replaces_only_pngs_the_package_wrote(smoke_run, tmp_path, monkeypatch):
    run = _copy_run(smoke_run, tmp_path / "run")
    write_images, _ = _flaky_writer(0)
    monkeypatch.setattr(analysis, "find_browser", lambda: "/usr/bin/true")
    monkeypatch.setattr(analysis.pio, "write_images", write_images)
    dest = tmp_path / "dest"
    analysis.build_figures(run, png=True, copy_to=dest)
    pngs = sorted(dest.glob("*.png"))
    assert pngs and all(is_marked_png(p) and p.read_bytes() == mark_png(TINY_PNG) for p in pngs)
    analysis.build_figures(run, png=True, copy_to=dest)  # its own copies are replaced
    foreign = pngs[0]
    foreign.write_bytes(TINY_PNG)  # a PNG of the same name the package did not write
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    with pytest.raises(RunFolderError, match=rf"{re.escape(foreign.name)} exists and was not written by "
                                             r"persona-refusal figures; it is not replaced"):
        analysis.build_figures(run, png=True, copy_to=dest)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before


@pytest.mark.parametrize("drop_times", [1, 2])
def test_a_png_kaleido_silently_skipped_is_retried_or_all_are_skipped(smoke_run, tmp_path, monkeypatch, caplog,
                                                                      drop_times):
    run = _copy_run(smoke_run, tmp_path / "run")
    write_images, calls = _flaky_writer(drop_times)
    monkeypatch.setattr(analysis, "find_browser", lambda: "/usr/bin/true")
    monkeypatch.setattr(analysis.pio, "write_images", write_images)
    with caplog.at_level(logging.WARNING, logger="persona_refusal.analysis"):
        paths = analysis.build_figures(run, png=True)
    pngs = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert len(calls) == 2 and len(calls[1]) == 1  # everything once, then only the missing one
    if drop_times == 1:  # the retry wrote it: a full set
        assert pngs == sorted(f"{n}.png" for n in STUDY_FIGURES)
        assert all(p.is_file() for p in paths)
    else:  # still missing: no half set, one warning naming it, HTML and report kept
        assert pngs == [] and all(p.suffix != ".png" for p in paths)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and calls[0][0].removesuffix(".png") in warnings[0]
        assert (run / "report.html").is_file()


def test_report_is_one_self_contained_file(built, results):
    run, _, _ = built
    text = (run / "report.html").read_text()
    # exactly the registered figures that have data, in registry order, each with its numbered title
    assert re.findall(r'id="plot-(\w+)"', text) == STUDY_FIGURES
    for i, name in enumerate(STUDY_FIGURES, 1):
        assert f"<h2>{i}. {FIGURES[name].title}</h2>" in text.replace("&#x27;", "'"), name
    assert not re.search(r"<script[^>]*\bsrc=", text), "the report must not load scripts from elsewhere"
    assert not re.search(r"""<link[^>]*href=["']https?:""", text)
    assert text.count("Plotly.newPlot") == len(STUDY_FIGURES)
    assert text.count("plotly.js v") == 1  # the library is inlined once
    # headline numbers
    assert rate_text(results["baseline"]["refusal"]) in text
    assert rate_text(results["persona"]["refusal"]) in text
    for c in results["gating_confirm"]:
        assert rate_text(c["refusal"]) in text
    assert results["model"]["model_id"] in text
    for ps in results["prompt_sets"].values():
        assert ps["sha256"] in text
    assert "Configuration" in text and "Persona rollouts" in text and "Example replies" in text


def test_report_escapes_model_output(smoke_run, tmp_path):
    run = _copy_run(smoke_run, tmp_path / "run")
    r = read_json(run / "results.json")
    evil = "<script>alert('x')</script> & <b>bold</b>"
    r["examples"]["persona"][0]["reply"] = evil
    r["examples"]["baseline"][0]["instruction"] = r["examples"]["persona"][0]["instruction"] = "<img src=x onerror=1>"
    text = analysis.build_report(run, results=r, figures={}).read_text()
    assert evil not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in text


def test_headline_states_early_vs_late_from_the_numbers(results):
    h = headline(results)
    text = " ".join(h["findings"])
    # the smoke model never refuses: no direction of the comparison may be claimed
    assert "late re-adding did not restore more refusal than early" in text
    r = copy.deepcopy(results)
    for c in r["gating_confirm"]:
        k = 7 if c["cell"] == "late" else 0
        c["refusal"] = {"k": k, "n": 8, "rate": k / 8, "ci": list(persona_refusal.ops.wilson_interval(k, 8))}
    assert "Yes — late re-adding restored more refusal than early" in " ".join(headline(r)["findings"])


# ----------------------------------------------------------------------------- isolation
def test_rebuilding_figures_loads_no_model(built):
    # `built` ran build_figures with load_chat_model and ChatModel() made to fail
    run, paths, _ = built
    assert not MODEL_LOADS
    assert (run / "report.html") in paths and (run / "figures" / "gating.html") in paths


def _imports_plotly(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "plotly"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "plotly":
            found.append(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and \
                isinstance(node.args[0].value, str) and node.args[0].value.split(".")[0] == "plotly":
            found.append(f"dynamic import of {node.args[0].value}")  # importlib.import_module("plotly"), __import__
    return found


def test_only_analysis_imports_plotly():
    sources = [p for p in PACKAGE_DIR.rglob("*.py") if "analysis" not in p.relative_to(PACKAGE_DIR).parts]
    assert len(sources) > 5
    offenders = {str(p.relative_to(PACKAGE_DIR)): m for p in sources if (m := _imports_plotly(p))}
    assert not offenders, f"plotly imported outside analysis/: {offenders}"
    # the scanner itself sees an import when there is one
    assert _imports_plotly(Path(registry.__file__))


# ----------------------------------------------------------------------------- all or nothing
@pytest.fixture
def built_run(smoke_run, tmp_path) -> Path:
    """A copy of the smoke run with its figures and report built once (no PNGs)."""
    run = _copy_run(smoke_run, tmp_path / "run")
    analysis.build_figures(run, png=False)
    return run


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run folder but results.json, by relative path (hidden ones included)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != "results.json"}


def test_build_figures_accepts_the_results_json_path(smoke_run, tmp_path):
    run = _copy_run(smoke_run, tmp_path / "run")
    paths = analysis.build_figures(run / "results.json", png=False)
    assert run / "figures" / "gating.html" in paths and run / "report.html" in paths
    assert not (run / "results.json").is_dir() and (run / "figures" / "selection.html").is_file()
    (run / "other.json").write_text("{}")
    with pytest.raises(RunFolderError, match=r"other\.json is a file, not a run folder \(give the run "
                                                      r"folder, or the path of its results\.json\)"):
        analysis.build_figures(run / "other.json", png=False)


@pytest.mark.parametrize("key, value, blamed, figure", [
    ("gating", [{"layer": "x"}], "key 'gating' entry 0", "figure 'gating' cannot be drawn"),
    ("gating", 5, "key 'gating' of", "figure 'gating' cannot be drawn"),
    ("gating", "entry 1", "key 'gating' entry 1", "figure 'gating' cannot be drawn"),
    ("knockout", {"x": 1}, "key 'knockout'", "figure 'knockout' cannot be drawn"),
    ("config", 5, "key 'config' of", "the report cannot be written"),
    ("examples", {"baseline": [5]}, "key 'examples' field 'baseline'", "the report cannot be written"),
])
def test_a_malformed_entry_fails_whole_and_leaves_the_figures_as_they_were(built_run, key, value, blamed, figure):
    before = _snapshot(built_run)
    r = read_json(built_run / "results.json")
    if value == "entry 1":
        r["gating"][1]["layer"] = "x"
    else:
        r[key] = value
    (built_run / "results.json").write_text(json.dumps(r))
    with pytest.raises(RunFolderError) as info:
        analysis.build_figures(built_run, png=False, copy_to=built_run.parent / "copies")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{figure}: {blamed}"), message
    assert f"{built_run / 'results.json'} is malformed (" in message
    assert message.endswith("(fix or remove that entry; nothing was written and the figures folder is as it was)")
    assert _snapshot(built_run) == before  # no new, changed or temporary file
    assert not (built_run.parent / "copies").exists()


def test_a_failed_figure_is_still_left_out_when_not_strict(smoke_run, tmp_path, caplog):
    run = _copy_run(smoke_run, tmp_path / "run")
    r = read_json(run / "results.json")
    r["gating"] = [{"layer": "x"}]
    (run / "results.json").write_text(json.dumps(r))
    with caplog.at_level(logging.WARNING, logger="persona_refusal.analysis"):
        _, figs = analysis.make_figures(run)
    assert list(figs) == [n for n in STUDY_FIGURES if n != "gating"]
    assert any("'gating' could not be drawn" in rec.getMessage() for rec in caplog.records)
    with pytest.raises(RunFolderError, match="figure 'gating' cannot be drawn: key 'gating' entry 0"):
        analysis.make_figures(run, strict=True)


def test_a_rebuild_replaces_the_figures_and_keeps_other_files(built_run):
    notes = built_run / "figures" / "notes.txt"
    notes.write_text("mine")
    (built_run / "figures" / "gating.html").write_text("stale")
    analysis.build_figures(built_run, png=False)
    assert notes.read_text() == "mine"
    assert "Plotly.newPlot" in (built_run / "figures" / "gating.html").read_text()
    assert not [p for p in built_run.iterdir() if p.name.startswith(".figures-")]


def test_find_bad_key_names_the_entry():
    from persona_refusal.analysis.drawing import find_bad_key

    def draw(d):
        return [int(g["layer"]) for g in d.get("gating") or []] + [len(d.get("names") or {})]

    assert find_bad_key(draw, {"gating": [{"layer": 1}, {"layer": "x"}], "names": {}}) == "'gating' entry 1"
    assert find_bad_key(draw, {"gating": 5}) == "'gating'"
    assert find_bad_key(lambda d: 1 / 0, {"a": 1}) is None


def test_committed_figures_are_unchanged_by_strict_drawing():
    # the committed run draws under strict=True exactly as each figure draws it directly
    _, figs = analysis.make_figures(COMMITTED_RUN, strict=True)
    committed = load_results(COMMITTED_RUN)
    for name, fig in figs.items():
        assert fig.to_json() == FIGURES[name].draw(dict(committed)).to_json(), name
