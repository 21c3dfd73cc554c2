"""report.html in a real browser: every figure renders, with its traces, axis titles and legend.

The other analysis tests check the HTML the package writes; this one checks what a reader
sees. A smoke study on the tiny model is turned into a run folder with
``build_figures(png=False)``, then headless Chromium opens ``report.html`` (plotly.js
inlined) and one standalone ``figures/*.html`` (plotly.js shared next to it), runs their
scripts (``--virtual-time-budget``) and dumps the rendered DOM. For each figure, the
expectations come from the figure object itself (``make_figures``), so the test follows
the figures as they change:

* the figure's div was turned into a plot (``js-plotly-plot``, plotly's ``main-svg``
  layers);
* one rendered trace group per visible trace (``g.trace`` for scatter and bar traces,
  ``g.hm`` for heatmaps);
* every axis title of the layout is drawn (``text.xtitle``, ``text.y2title`` …) with its text;
* the legend is drawn with one entry per trace that has a legend entry, named as the trace;
* the browser console shows no uncaught JavaScript error.

Skipped, with the reason, only when no Chromium/Chrome binary exists.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import run_smoke_study

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
]
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
LEGEND_TYPES = {"scatter", "scattergl", "bar", "box", "violin", "histogram"}
"""Trace types that get a legend entry unless ``showlegend=False`` (heatmaps do not)."""


def find_chromium() -> str | None:
    """A Chromium/Chrome binary: ``$PERSONA_REFUSAL_CHROMIUM``, Debian's, ``PATH``, then kaleido's."""
    env = os.environ.get("PERSONA_REFUSAL_CHROMIUM")
    if env and Path(env).is_file():
        return env
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    try:
        from persona_refusal.analysis import find_browser

        return find_browser()
    except Exception:
        return None


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium/Chrome binary found (install chromium, or set "
                                                         "PERSONA_REFUSAL_CHROMIUM): the rendered report cannot be checked")


# ----------------------------------------------------------------------------- DOM
class _FigureDom(HTMLParser):
    """Collects, for every ``<div id="plot-NAME">`` (or ``<div class="plotly-graph-div">``),
    the classes of the ``g`` elements inside it and the text of its ``text`` elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.figures: dict[str, dict] = {}
        self._name: str | None = None
        self._depth = 0
        self._texts: list[tuple[str, list[str]]] = []  # open <text> elements: (class, chunks)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class") or ""
        if self._name is None and tag == "div" and "plotly-graph-div" in cls.split():
            self._name = (a.get("id") or f"figure-{len(self.figures)}").removeprefix("plot-")
            self.figures[self._name] = {"class": cls, "g": [], "svg": [], "text": []}
            self._depth = 0
        if self._name is None:
            return
        fig = self.figures[self._name]
        if tag == "g":
            fig["g"].append(cls)
        elif tag == "svg":
            fig["svg"].append(cls)
        elif tag == "text":
            self._texts.append((cls, []))
        if tag not in VOID_TAGS:
            self._depth += 1

    def handle_startendtag(self, tag, attrs):
        if self._name is not None and tag == "g":
            self.figures[self._name]["g"].append(dict(attrs).get("class") or "")

    def handle_endtag(self, tag):
        if self._name is None or tag in VOID_TAGS:
            return
        if tag == "text" and self._texts:
            cls, chunks = self._texts.pop()
            self.figures[self._name]["text"].append((cls, "".join(chunks)))
        self._depth -= 1
        if self._depth == 0:
            self._name = None

    def handle_data(self, data):
        for _, chunks in self._texts:
            chunks.append(data)


def rendered_figures(dom: str) -> dict[str, dict]:
    parser = _FigureDom()
    parser.feed(dom)
    return parser.figures


def render(page: Path, profile: Path) -> tuple[str, str]:
    """``(rendered DOM, browser log)`` of a page after its scripts ran."""
    proc = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout, proc.stderr


def _plain(text: str) -> str:
    """Text as plotly draws it: tags (``<br>``, ``<sup>``) dropped, entities decoded, whitespace
    and the zero-width spaces plotly puts around ``<sup>`` ignored."""
    return re.sub(r"[\s\u200b]+", "", html.unescape(re.sub(r"<[^>]+>", "", str(text))))


def _axis_class(axis_key: str) -> str:
    """Layout key → class of its title element: ``xaxis`` → ``xtitle``, ``yaxis2`` → ``y2title``."""
    letter, number = axis_key[0], axis_key[len("xaxis"):]
    return f"{letter}{number}title"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A smoke study on the tiny model, with figures and report.html (no PNGs)."""
    from persona_refusal.analysis import build_figures

    out = tmp_path_factory.mktemp("browser_run")
    run_smoke_study(out)
    build_figures(out, png=False)
    return out


@pytest.fixture(scope="module")
def expected(run_folder) -> dict:
    """The figures as plotly objects, drawn from the same run folder."""
    from persona_refusal.analysis import make_figures

    _, figs = make_figures(run_folder)
    return figs


@pytest.fixture(scope="module")
def report_dom(run_folder, tmp_path_factory) -> tuple[dict[str, dict], str]:
    dom, log = render(run_folder / "report.html", tmp_path_factory.mktemp("chromium_profile"))
    return rendered_figures(dom), log


# ----------------------------------------------------------------------------- checks
def check_figure(name: str, fig, rendered: dict) -> None:
    """Assert that ``rendered`` (one figure's DOM) shows what ``fig`` describes."""
    assert "js-plotly-plot" in rendered["class"].split(), f"{name}: plotly never drew into the div"
    assert rendered["svg"].count("main-svg") >= 1, f"{name}: no main-svg layer"
    g = Counter()
    for cls in rendered["g"]:
        tokens = cls.split()
        if "trace" in tokens:
            g["trace"] += 1
        if "hm" in tokens:
            g["hm"] += 1
    visible = [t for t in fig.data if t.visible is not False]
    n_heatmaps = sum(t.type == "heatmap" for t in visible)
    assert g["hm"] == n_heatmaps, f"{name}: {g['hm']} heatmaps drawn, {n_heatmaps} in the figure"
    assert g["trace"] == len(visible) - n_heatmaps, (
        f"{name}: {g['trace']} traces drawn, {len(visible) - n_heatmaps} in the figure")

    texts = rendered["text"]
    for key in fig.layout:
        if not re.fullmatch(r"[xy]axis\d*", key):
            continue
        title = fig.layout[key].title.text
        if not title:
            continue
        drawn = [t for cls, t in texts if _axis_class(key) in cls.split()]
        assert drawn, f"{name}: the title of {key} ({title!r}) is not drawn"
        assert _plain(drawn[0]) == _plain(title), f"{name}: {key} title drawn as {drawn[0]!r}, expected {title!r}"
    main_title = fig.layout.title.text
    if main_title:
        drawn = [t for cls, t in texts if "gtitle" in cls.split()]
        assert drawn and _plain(drawn[0]) == _plain(main_title), f"{name}: figure title not drawn"

    entries = [t for t in visible if t.showlegend is True or (t.showlegend is None and t.type in LEGEND_TYPES)]
    show = fig.layout.showlegend
    legend_expected = show is True or (show is None and len(entries) >= 2)
    items = [t for cls, t in texts if "legendtext" in cls.split()]
    if legend_expected:
        assert "legend" in rendered["g"], f"{name}: no legend drawn"
        assert len(items) == len(entries), f"{name}: {len(items)} legend entries drawn, {len(entries)} expected"
        assert sorted(_plain(i) for i in items) == sorted(_plain(t.name or "") for t in entries), (
            f"{name}: legend entries {items} do not match the trace names")
    else:
        assert not items, f"{name}: legend entries drawn where the figure has none"


def test_report_renders_every_figure(report_dom, expected):
    figures, _ = report_dom
    assert expected, "make_figures drew nothing"
    missing = sorted(set(expected) - set(figures))
    assert not missing, f"figures missing from the rendered report: {missing}"
    for name, fig in expected.items():
        check_figure(name, fig, figures[name])


def test_report_has_no_javascript_errors(report_dom):
    _, log = report_dom
    console = [line for line in log.splitlines() if "CONSOLE" in line]
    errors = [line for line in console if "Uncaught" in line or "Error" in line]
    assert not errors, "JavaScript errors in report.html:\n" + "\n".join(errors[:5])


def test_standalone_figure_file_renders(run_folder, expected, tmp_path):
    """``figures/NAME.html`` load plotly.js from the shared ``figures/plotly.min.js``."""
    name = "selection" if "selection" in expected else next(iter(expected))
    dom, log = render(run_folder / "figures" / f"{name}.html", tmp_path / "profile")
    figures = rendered_figures(dom)
    assert len(figures) == 1, f"{name}.html: {len(figures)} plot divs rendered"
    check_figure(name, expected[name], next(iter(figures.values())))
    assert not [line for line in log.splitlines() if "CONSOLE" in line and "Uncaught" in line]


# ----------------------------------------------------------------------------- the refusal study's report
@pytest.fixture(scope="module")
def refusal_folder(tmp_path_factory) -> Path:
    """A smoke refusal study on the tiny model, with figures and report.html (no PNGs)."""
    from conftest import no_typecheck
    from persona_refusal.analysis import build_figures
    from persona_refusal.study import RefusalConfig, run_refusal_study

    out = tmp_path_factory.mktemp("browser_refusal") / "run"
    with no_typecheck():
        run_refusal_study(RefusalConfig.preset("smoke", model="tiny"), out, progress=False)
    build_figures(out, png=False)
    return out


def test_refusal_report_renders_its_figures_without_errors(refusal_folder, tmp_path):
    from persona_refusal.analysis import make_figures

    _, expected = make_figures(refusal_folder)
    assert set(expected) == {"front", "edits"}
    dom, log = render(refusal_folder / "report.html", tmp_path / "profile")
    figures = rendered_figures(dom)
    for name, fig in expected.items():
        check_figure(name, fig, figures[name])
    console = [line for line in log.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Error" in line]
