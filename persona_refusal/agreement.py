"""Agreement between judges: how often the first-token proxy, the phrase judges and any
other judge (a model judge) give a reply the same label, with Cohen's κ.

Context
-------
A study measures refusal in two ways (see :mod:`persona_refusal.evaluation`): the fast
*first-token proxy* (the greedy first token is a refusal token) and a *judge* reading the
generated reply. Every judged condition of a run folder keeps, per reply, the proxy
(``refused``) and the labels of every built-in judge (``labels_by_judge``: ``strict``,
``lenient``), in ``checkpoints/STAGE.json``. This module reads them back, labels the
stored replies with any further judge (e.g. ``get_judge("model:tiny")``), and compares
every pair of *raters*:

* on the **binary** scale (refusal vs not refusal), for every pair, the proxy included;
* on the **3-way** scale (refusal / compliance / degenerate), when both raters label replies.

Per pair: ``n``, the raw agreement with a Wilson 95% interval, Cohen's κ with a seeded
percentile bootstrap 95% interval (replies resampled), the confusion table and the replies
they disagree on. κ is ``None``, with the reason, when both raters are constant (it is
0/0 or says nothing); when only one of them is constant κ is exactly 0, whatever the other
does, and the record says so.

:func:`judge_agreement` does it for a run folder and writes ``judge_agreement.json`` and
``judge_agreement.md`` next to the run's files (it never changes them); the labels of
judges it had to run are kept in ``judge_agreement.labels.json``, so a second invocation
judges nothing again. ``persona-refusal agreement DIR [--judge model:NAME]`` is the
command; ``persona-refusal figures DIR`` adds the table to ``report.html``.

Example:
    >>> r = compare(["refusal", "refusal", "compliance", "compliance"],
    ...             ["refusal", "compliance", "compliance", "compliance"], n_boot=200, seed=0)
    >>> r["n"], r["agreement"]["k"], r["kappa"]
    (4, 3, 0.5)
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from persona_refusal.errors import ConfigError, PersonaRefusalError, RunFolderError
from persona_refusal.evaluation import JUDGES, LABELS, Judge, Rate, get_judge, judge_name, judge_responses
from persona_refusal.storage import (MAX_JSON_DEPTH, atomic_write_text, canonical_json, check_fields, check_output,
                                     file_kind, json_depth, read_json, read_user_bytes, read_user_json, read_user_text,
                                     sha256_bytes, sha256_file, sha256_json, write_json)
from persona_refusal.study.gating import StudyConfig, study_prompts
from persona_refusal.study.store import LOCK, MANIFEST, RUN_ENTRIES, read_object

__all__ = [
    "PROXY", "NOT_REFUSAL", "FORMAT", "OUT_NAME", "cohen_kappa", "kappa_interval", "confusion", "compare",
    "binary", "Condition", "JudgedRun", "read_run", "agreement_table", "judge_agreement", "render_markdown",
    "read_agreement", "output_paths", "select_stages", "LABELLED_REPLIES", "labelled_replies", "judge_check",
]

log = logging.getLogger(__name__)

PROXY = "first_token"
"""The rater name of the first-token proxy (binary: it only says whether a reply opens with a refusal token)."""
NOT_REFUSAL = "not refusal"
"""The second label of the binary scale."""
FORMAT = "persona_refusal.judge_agreement/1"
"""``format`` of ``judge_agreement.json``."""
_CACHE_FORMAT = "persona_refusal.judge_labels/1"
OUT_NAME = "judge_agreement.json"
"""The record's file name in a run folder (the report looks for it there)."""
_MD_MARK = "<!-- written by persona-refusal agreement (persona_refusal.agreement) -->"
STAGE_ORDER = ("calibrate", "eval", "coherence", "gating_judged", "gating_judged_harmless", "sensitivity",
               "persona_orthogonal", "confirm")
"""Judged stages in the order of a study (others follow, by name)."""
NOT_COMPARED = frozenset({"refusal_baseline"})
"""Judged checkpoints left out of the comparison: the baseline check before the stages
(:mod:`persona_refusal.study.baseline`), whose replies are short and whose only use is its warning."""
EXCERPT = 300
"""Characters of a reply kept with a disagreeing item."""
MAX_ITEMS_JSON = 1000
"""Disagreeing replies kept, with their text, in the JSON record (the count says how many there are)."""
MAX_ITEMS_MD = 40
"""Disagreeing replies listed in the Markdown table."""


# ============================================================================ statistics
def binary(labels: Sequence[str]) -> list[str]:
    """Labels on the binary scale: ``refusal`` stays, anything else is :data:`NOT_REFUSAL`.

    Example:
        >>> binary(["refusal", "degenerate", "compliance"])
        ['refusal', 'not refusal', 'not refusal']
    """
    return [l if l == "refusal" else NOT_REFUSAL for l in labels]


def _categories(a: Sequence[str], b: Sequence[str]) -> list[str]:
    """The label set of a pair, in a fixed order: refusal, not refusal, compliance, degenerate, then others."""
    known = ["refusal", NOT_REFUSAL, *[l for l in LABELS if l != "refusal"]]
    seen = set(a) | set(b)
    return [l for l in known if l in seen] + sorted(seen - set(known))


def _constant_note(a: Sequence[str], b: Sequence[str], names: tuple[str, str]) -> tuple[str | None, str | None]:
    """``(reason κ is undefined, note on a defined κ)`` from which raters are constant."""
    ca, cb = len(set(a)) == 1, len(set(b)) == 1
    if ca and cb:
        if a[0] == b[0]:
            return (f"undefined: both raters give every reply the label {a[0]!r} (chance agreement is 1, "
                    "κ is 0/0)"), None
        return (f"undefined: both raters are constant ({names[0]}: {a[0]!r}, {names[1]}: {b[0]!r}), "
                "so κ says nothing about agreement"), None
    if ca or cb:
        who, lab = (names[0], a[0]) if ca else (names[1], b[0])
        return None, f"{who} gives every reply the label {lab!r}: κ is 0 whatever the other rater does"
    return None, None


def cohen_kappa(a: Sequence[str], b: Sequence[str],
                names: tuple[str, str] = ("rater a", "rater b")) -> tuple[float | None, str | None]:
    """Cohen's κ of two raters' labels of the same items: ``(p_o − p_e) / (1 − p_e)``.

    ``p_o`` is the share of items with the same label, ``p_e`` the agreement expected by
    chance from the two raters' label frequencies. Returns ``(κ, None)``, or ``(None,
    reason)`` when κ is undefined: no items, or both raters constant (``names`` name them
    in the reason).

    Example:
        >>> cohen_kappa(["r", "r", "c", "c"], ["r", "r", "c", "c"])
        (1.0, None)
        >>> cohen_kappa(["r", "r"], ["r", "r"])[0] is None
        True
    """
    if len(a) != len(b):
        raise ConfigError(f"two raters must label the same items: {len(a)} and {len(b)} labels")
    n = len(a)
    if n == 0:
        return None, "undefined: no items"
    reason, _ = _constant_note(a, b, names)
    if reason is not None:
        return None, reason
    cats = _categories(a, b)
    po = sum(x == y for x, y in zip(a, b)) / n
    pe = sum((sum(x == c for x in a) / n) * (sum(y == c for y in b) / n) for c in cats)
    return (po - pe) / (1.0 - pe), None


def kappa_interval(a: Sequence[str], b: Sequence[str], *, n_boot: int, seed: int) -> tuple[list[float] | None, str | None]:
    """Percentile bootstrap 95% interval of Cohen's κ, items resampled with replacement.

    Seeded (``torch.Generator().manual_seed(seed)``): the same labels, ``n_boot`` and
    ``seed`` give the same interval. Resamples where κ is undefined (both raters constant
    in the resample) are left out; when they are more than half, or κ itself is undefined,
    there is no interval: ``(None, reason)``. The quantiles are read as in
    :func:`persona_refusal.study.stats.restoration`.

    Example:
        >>> a = ["r"] * 10 + ["c"] * 10
        >>> b = ["r"] * 8 + ["c"] * 12
        >>> lo, hi = kappa_interval(a, b, n_boot=500, seed=0)[0]
        >>> lo <= cohen_kappa(a, b)[0] <= hi <= 1.0
        True
    """
    if n_boot < 1:
        raise ConfigError(f"n_boot must be at least 1, got {n_boot}")
    point, reason = cohen_kappa(a, b)
    if point is None:
        return None, reason
    cats = _categories(a, b)
    k = len(cats)
    pos = {c: i for i, c in enumerate(cats)}
    codes = torch.tensor([pos[x] * k + pos[y] for x, y in zip(a, b)], dtype=torch.long)
    n = codes.numel()
    g = torch.Generator().manual_seed(int(seed))
    values: list[torch.Tensor] = []
    chunk = max(1, min(n_boot, 2_000_000 // max(1, n)))
    done = 0
    while done < n_boot:
        c = min(chunk, n_boot - done)
        idx = torch.randint(0, n, (c, n), generator=g)
        counts = torch.zeros(c, k * k, dtype=torch.float64).scatter_add_(
            1, codes[idx], torch.ones(c, n, dtype=torch.float64)).view(c, k, k) / n
        po = counts.diagonal(dim1=1, dim2=2).sum(1)
        pa, pb = counts.sum(2), counts.sum(1)
        pe = (pa * pb).sum(1)
        both_constant = ((pa > 0).sum(1) == 1) & ((pb > 0).sum(1) == 1)
        ok = ~both_constant & ((1.0 - pe).abs() > 1e-12)
        values.append(((po - pe) / (1.0 - pe))[ok])
        done += c
    vals = torch.cat(values).sort().values
    if vals.numel() < max(1, n_boot // 2):
        return None, f"{n_boot - vals.numel()} of {n_boot} resamples have both raters constant: no interval"
    lo = float(vals[int(0.025 * (len(vals) - 1))])
    hi = float(vals[int(math.ceil(0.975 * (len(vals) - 1)))])
    return [lo, hi], None


def confusion(a: Sequence[str], b: Sequence[str]) -> dict:
    """The confusion table of two raters: ``{"labels": [...], "counts": [[...]]}``, rows rater a, columns rater b.

    Example:
        >>> confusion(["refusal", "compliance"], ["refusal", "refusal"])
        {'labels': ['refusal', 'compliance'], 'counts': [[1, 0], [1, 0]]}
    """
    cats = _categories(a, b)
    pos = {c: i for i, c in enumerate(cats)}
    counts = [[0] * len(cats) for _ in cats]
    for x, y in zip(a, b):
        counts[pos[x]][pos[y]] += 1
    return {"labels": cats, "counts": counts}


def compare(a: Sequence[str], b: Sequence[str], *, n_boot: int, seed: int,
            names: tuple[str, str] = ("a", "b")) -> dict:
    """Agreement of two raters on the same items: ``n``, ``agreement`` (a Wilson rate
    record, :meth:`persona_refusal.evaluation.Rate.to_dict`), ``kappa`` with ``kappa_ci``
    (bootstrap, :func:`kappa_interval`), ``kappa_note`` (why κ or its interval is missing,
    or that a constant rater pins κ at 0), and the ``confusion`` table.

    Example:
        >>> r = compare(["refusal"] * 3, ["refusal"] * 3, n_boot=10, seed=0)
        >>> r["agreement"]["rate"], r["kappa"], r["kappa_note"].startswith("undefined")
        (1.0, None, True)
    """
    if len(a) != len(b):
        raise ConfigError(f"two raters must label the same items: {len(a)} and {len(b)} labels")
    n = len(a)
    kappa, reason = cohen_kappa(a, b, names)
    ci, ci_reason = (None, None) if kappa is None else kappa_interval(a, b, n_boot=n_boot, seed=seed)
    note = reason or ci_reason or (_constant_note(a, b, names)[1] if n else None)
    return {"n": n, "agreement": _rate(sum(x == y for x, y in zip(a, b)), n), "kappa": kappa,
            "kappa_ci": ci, "kappa_note": note, "confusion": confusion(a, b)}


def _rate(k: int, n: int) -> dict:
    """:meth:`Rate.to_dict` with ``None`` where it is not a number (``n`` = 0), never NaN."""
    rec = Rate(k, n).to_dict()
    return {**rec, "rate": rec["rate"] if n else None, "ci": rec["ci"] if n else [None, None]}


# ============================================================================ the run folder
@dataclass
class Condition:
    """One judged condition of a run folder: its replies and every stored rating."""

    stage: str
    """Checkpoint (``eval``, ``gating_judged`` …)."""
    key: str
    """Condition key within the stage (``baseline``, ``cell:late:2.0`` …)."""
    replies: list[str]
    """Generated replies, in prompt order."""
    ratings: dict[str, list[str]]
    """Rater name → one label per reply: :data:`PROXY` (binary), every stored judge (3-way)."""
    instructions: list[str] | None = None
    """The prompts, when they could be recovered (see :func:`read_run`)."""

    @property
    def name(self) -> str:
        """``stage/key``."""
        return f"{self.stage}/{self.key}"


@dataclass
class JudgedRun:
    """Every judged condition of a run folder (:func:`read_run`)."""

    dir: Path
    conditions: list[Condition]
    raters: dict[str, dict]
    """Rater name → ``{"scale": "binary" | "3-way", "source": ...}``, in table order."""
    config: dict
    """The run's ``config.json`` record."""
    fingerprint: dict
    """sha256 of ``config.json`` and of each checkpoint read (a later change makes the record stale)."""
    prompts_note: dict[str, str] = field(default_factory=dict)
    """Stage → why its prompts could not be recovered."""
    seed: int = 0
    n_boot: int = 2000


def _stage_prompts(stage: str, sets: Mapping[str, Sequence[str]], cfg: StudyConfig) -> list[str] | None:
    """The prompts a judged stage answered, as the stage code chooses them (``None``: not a known stage)."""
    if stage in ("eval", "gating_judged", "sensitivity", "persona_orthogonal"):
        return list(sets["eval_harmful"])
    if stage == "gating_judged_harmless":
        return list(sets["eval_harmless"])[: cfg.n_control_harmless]
    if stage == "confirm":
        return list(sets["eval_harmful"])[: cfg.n_sweep]
    if stage == "calibrate":
        return list(sets["val_harmful"]) + list(sets["val_harmless"])
    if stage == "coherence":
        return list(sets["eval_harmless"])[: cfg.n_coherence]
    return None


RUN_RECORD_FIELDS = {"*": dict, "config": dict, "inputs": dict, "resolved": dict, "model": dict,
                     "prompt_sets": dict, "config.seed": int, "config.bootstrap": int, "config.judge": str,
                     "model.model_id": (str, type(None))}
"""The types of the fields of a run's ``config.json`` that the agreement reads."""


def _recover_prompts(record: dict) -> tuple[tuple[StudyConfig, dict] | None, str | None]:
    """The run's configuration and prompt sets, read again and checked against the recorded sha256."""
    try:
        cfg = StudyConfig.from_dict(dict(record["config"]))
        sets = study_prompts(cfg)
    except (PersonaRefusalError, ValueError, TypeError, KeyError, OSError) as e:
        return None, f"the run's prompt sets cannot be read again ({e})"
    recorded = record.get("prompt_sets") or {}
    for name, ps in sets.items():
        want = (recorded.get(name) or {}).get("sha256")
        if want is not None and ps.sha256 != want:
            return None, f"prompt set {name} ({ps.source or ps.name}) changed since the run (sha256 differs)"
    return (cfg, {k: list(v) for k, v in sets.items()}), None


def _is_judged(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    replies, refused = entry.get("replies"), entry.get("refused")
    labels = entry.get("labels_by_judge") if isinstance(entry.get("labels_by_judge"), dict) else None
    if not isinstance(replies, list) or not isinstance(refused, list) or len(replies) != len(refused) or not replies:
        return False
    if labels is None:
        labels = {"_": entry.get("labels")}
    return all(isinstance(v, list) and len(v) == len(replies) and all(isinstance(x, str) for x in v)
               for v in labels.values()) and all(isinstance(x, str) for x in replies)


def _check_dir(run_dir: str | os.PathLike) -> Path:
    text = os.fspath(run_dir)
    if not str(text).strip():
        raise RunFolderError(f"the run folder is empty ({text!r})",
                             hint="give a run folder, e.g. persona-refusal agreement runs/demo")
    d = Path(text)
    if not d.exists():
        raise RunFolderError(f"{d} does not exist", hint="give the --out folder of a `persona-refusal run`")
    if not d.is_dir():
        raise RunFolderError(f"{d} is a file, not a run folder", hint="give the --out folder of a `persona-refusal run`")
    return d


def read_run(run_dir: str | os.PathLike) -> JudgedRun:
    """Every judged condition stored in a run folder, with the prompts where they can be recovered.

    A judged condition is a checkpoint entry with ``replies``, ``refused`` (the first-token
    proxy) and ``labels_by_judge`` (or, in older runs, ``labels`` alone: the configured
    judge's). The prompts are not in the checkpoints: they are read again from the run's
    configuration (``config.json``: the bundled sets, or the files the run named), checked
    against the sha256 the run recorded, and cut as each stage cuts them (``eval``,
    ``gating_judged``, ``sensitivity`` and ``persona_orthogonal``: the evaluation harmful
    prompts; ``gating_judged_harmless``: the first ``n_control_harmless`` evaluation
    harmless; ``confirm``: the first ``n_sweep``; ``calibrate``: val harmful then val
    harmless; ``coherence``: the first ``n_coherence`` evaluation harmless). A stage whose prompts cannot be recovered (a moved prompt file,
    an unknown stage, a length that does not match) keeps ``instructions=None`` and a note.

    Raises:
        RunFolderError: not a folder, no run record (``config.json``) in it, or no judged
            condition in its checkpoints.
    """
    d = _check_dir(run_dir)
    cfg_path = d / "config.json"
    if file_kind(cfg_path) not in (None, "file"):  # a pipe, a link: refused by the reader, never opened blocking
        read_user_bytes(cfg_path, what="run record", error=RunFolderError,
                        kind_hint="give the --out folder of a `persona-refusal run`")
    try:
        record = read_user_json(cfg_path, what="run record", error=RunFolderError)
        if not isinstance(record, dict) or not {"config", "inputs", "resolved", "model"} <= set(record):
            raise ValueError("not a run record")
    except (ValueError, OSError, RecursionError):
        raise RunFolderError(f"{d} is not a run folder: it has no readable config.json of a persona_refusal run",
                             hint="give the --out folder of a `persona-refusal run`") from None
    check_fields(record, RUN_RECORD_FIELDS, where=f"run record {cfg_path}", error=RunFolderError,
                 hint="give the --out folder of a `persona-refusal run`, as the run wrote it")
    try:
        headline = judge_name((record.get("config") or {}).get("judge", "strict"))
    except ConfigError:  # a judge name of another version
        headline = str((record.get("config") or {}).get("judge"))
    recovered, why = _recover_prompts(record)
    fingerprint = {"config_sha256": sha256_file(cfg_path), "checkpoints": {},
                   "checkpoint_files": sorted(p.stem for p in (d / "checkpoints").glob("*.json"))}
    conditions: list[Condition] = []
    notes: dict[str, str] = {}
    files = sorted(p for p in (d / "checkpoints").glob("*.json") if p.stem not in NOT_COMPARED) \
        if (d / "checkpoints").is_dir() else []
    stages = sorted(files, key=lambda p: (STAGE_ORDER.index(p.stem) if p.stem in STAGE_ORDER else len(STAGE_ORDER),
                                          p.stem))
    own: list[tuple[Condition, list[str]]] = []  # the headline labels, where a custom judge may have made them
    for path in stages:
        try:
            raw = path.read_bytes()  # read once: the hash is of the bytes the table comes from
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
        except (ValueError, OSError) as e:
            log.warning("checkpoint %s is damaged (%s): left out", path, " ".join(str(e).split()))
            continue
        entries = {k: v for k, v in data.items() if _is_judged(v)}
        if not entries:
            continue
        fingerprint["checkpoints"][path.stem] = sha256_bytes(raw)
        prompts = _stage_prompts(path.stem, recovered[1], recovered[0]) if recovered else None
        for key, e in entries.items():
            n = len(e["replies"])
            instructions = e.get("instructions") if isinstance(e.get("instructions"), list) else prompts
            if instructions is not None and len(instructions) != n:
                notes[path.stem] = f"{len(instructions)} prompts recovered for {n} replies"
                instructions = None
            elif instructions is None:
                notes[path.stem] = why or f"stage {path.stem} is not one whose prompts this version knows"
            by_judge = e.get("labels_by_judge") if isinstance(e.get("labels_by_judge"), dict) \
                else {headline: e["labels"]}
            ratings = {PROXY: ["refusal" if r else NOT_REFUSAL for r in e["refused"]],
                       **{name: list(labels) for name, labels in by_judge.items()}}
            conditions.append(Condition(path.stem, key, list(e["replies"]), ratings,
                                        None if instructions is None else [str(x) for x in instructions]))
            labels = e.get("labels")
            if isinstance(labels, list) and len(labels) == n and all(isinstance(x, str) for x in labels):
                own.append((conditions[-1], list(labels)))
    if not conditions:
        raise RunFolderError(f"{d} holds no judged conditions (no checkpoint with generated, judged replies)",
                             hint=f"run the stages that judge replies first, e.g. persona-refusal run --out {d}")
    if len(own) == len(conditions) and any(labels != c.ratings.get(headline) for c, labels in own):
        for c, labels in own:  # a custom judge of the Python API made the headline labels: one more rater
            c.ratings["run_judge"] = labels
    # raters every condition has, in table order: the proxy, the built-in judges, any other stored one
    common = set(conditions[0].ratings).intersection(*(c.ratings for c in conditions[1:]))
    order = [PROXY, *[j for j in JUDGES if j in common], *sorted(common - {PROXY, *JUDGES})]
    raters = {r: {"scale": "binary" if r == PROXY else "3-way",
                  "source": ("first-token proxy (stored)" if r == PROXY else
                             f"the run's own judge ({record.get('judge')})" if r == "run_judge" else "stored labels")}
              for r in order}
    cfg = record.get("config") or {}
    seed = cfg.get("seed") if isinstance(cfg.get("seed"), int) and not isinstance(cfg.get("seed"), bool) else 0
    n_boot = cfg.get("bootstrap") if isinstance(cfg.get("bootstrap"), int) and cfg.get("bootstrap", 0) > 0 else 2000
    return JudgedRun(d, conditions, raters, record, fingerprint, notes, seed=seed, n_boot=n_boot)


def select_stages(run: JudgedRun, stages: Sequence[str]) -> None:
    """Keep only the conditions of ``stages`` in ``run`` (in place); a stage the run did not
    judge is a one-line :class:`ConfigError` naming the ones it did."""
    have = list(dict.fromkeys(c.stage for c in run.conditions))
    wanted = list(dict.fromkeys(stages))
    unknown = [s for s in wanted if s not in have]
    if not wanted or unknown:
        raise ConfigError(f"no judged stage {', '.join(map(repr, unknown)) or '(none given)'} in {run.dir}",
                          hint=f"choose among: {', '.join(have)}")
    run.conditions = [c for c in run.conditions if c.stage in wanted]
    run.prompts_note = {k: v for k, v in run.prompts_note.items() if k in wanted}


# ============================================================================ judging again (cached)
def _identity(judge: Judge) -> str:
    """What identifies a judge's labels in the cache: its repr, unless that holds a memory address."""
    text = repr(judge)
    if " at 0x" in text:
        text = f"{type(judge).__module__}.{type(judge).__qualname__}"
    return text


def _read_cache(path: Path) -> dict:
    if not path.is_file():
        return {"format": _CACHE_FORMAT, "judges": {}}
    try:
        data = read_object(path)
        if data.get("format") != _CACHE_FORMAT or not isinstance(data.get("judges"), dict):
            raise ValueError("not a judge-label cache")
        return data
    except (ValueError, OSError) as e:
        log.warning("%s is damaged (%s): judging again", path, " ".join(str(e).split()))
        return {"format": _CACHE_FORMAT, "judges": {}}


def _add_judge(run: JudgedRun, name: str, judge: Judge, cache_path: Path, progress: bool) -> dict:
    """Labels of ``judge`` for every condition, from the cache where the replies are the same; returns counts."""
    cache = _read_cache(cache_path)
    ident = _identity(judge)
    slot = cache["judges"].get(name)
    if not isinstance(slot, dict) or slot.get("identity") != ident or not isinstance(slot.get("conditions"), dict):
        slot = {"identity": ident, "conditions": {}}
        cache["judges"][name] = slot
    todo = []
    reused = 0
    for c in run.conditions:
        key = sha256_json({"instructions": c.instructions, "replies": c.replies})
        hit = slot["conditions"].get(c.name)
        if isinstance(hit, dict) and hit.get("sha256") == key and isinstance(hit.get("labels"), list) \
                and len(hit["labels"]) == len(c.replies) and all(l in LABELS for l in hit["labels"]):
            c.ratings[name] = list(hit["labels"])
            reused += 1
        else:
            todo.append((c, key))
    missing = [c for c, _ in todo if c.instructions is None]
    if missing:
        stage = missing[0].stage
        raise ConfigError(f"the prompts of stage {stage} in {run.dir} cannot be recovered "
                          f"({run.prompts_note.get(stage, 'unknown')}), and judge {name!r} reads them",
                          hint="put the prompt files back where the run read them, or leave out --judge")
    bar = _progress(progress and bool(todo))
    for c, key in bar(todo, desc=f"judging with {name}"):
        labels = judge_responses(c.instructions or [], c.replies, judge)
        c.ratings[name] = labels
        slot["conditions"][c.name] = {"sha256": key, "labels": labels}
        write_json(cache_path, cache)  # after every condition: an interrupted judging resumes there
    return {"judged": len(todo), "reused": reused}


def _progress(on: bool) -> Callable:
    if not on:
        return lambda it, desc=None: it
    from tqdm.auto import tqdm  # here, not at import: in a notebook it warns once when first imported

    return lambda it, desc=None: tqdm(it, desc=desc, leave=False)


# ============================================================================ the table
def _items(run: JudgedRun) -> list[tuple[Condition, int]]:
    return [(c, i) for c in run.conditions for i in range(len(c.replies))]


def agreement_table(run: JudgedRun) -> dict:
    """Every pair of ``run.raters`` compared over every stored reply (binary; 3-way too when
    both raters are judges), the refusal rate of each rater per condition, and the replies
    where raters disagree (judge against judge first). JSON-able; no NaN."""
    items = _items(run)
    names = list(run.raters)
    labels = {r: [c.ratings[r][i] for c, i in items] for r in names}
    pairs = []
    for a, b in combinations(names, 2):
        scales = ["binary"] + (["3-way"] if run.raters[a]["scale"] == run.raters[b]["scale"] == "3-way" else [])
        for scale in scales:
            la, lb = (labels[a], labels[b]) if scale == "3-way" else (binary(labels[a]), binary(labels[b]))
            rec = compare(la, lb, n_boot=run.n_boot, seed=run.seed, names=(a, b))
            differ = [j for j, (x, y) in enumerate(zip(la, lb)) if x != y]
            rec.update({"a": a, "b": b, "scale": scale, "n_disagree": len(differ),
                        "disagreements": [[items[j][0].stage, items[j][0].key, items[j][1]] for j in differ]})
            pairs.append(rec)
    rates = []
    for c in run.conditions:
        n = len(c.replies)
        rates.append({"stage": c.stage, "condition": c.key, "n": n,
                      "refusal": {r: _rate(sum(l == "refusal" for l in c.ratings[r]), n) for r in names}})
    judges = [r for r in names if run.raters[r]["scale"] == "3-way"]

    def rank(j: int) -> int | None:  # 0: judges disagree on the label, 1: only on refusal vs not, None: all agree
        judge_labels = {labels[r][j] for r in judges}
        if len(judge_labels) > 1:
            return 0
        return 1 if len({binary([labels[r][j]])[0] for r in names}) > 1 else None

    ranked = sorted(((rk, j) for j in range(len(items)) if (rk := rank(j)) is not None))
    listed = []
    for rk, j in ranked[:MAX_ITEMS_JSON]:
        c, i = items[j]
        listed.append({"stage": c.stage, "condition": c.key, "index": i, "judges_differ": rk == 0,
                       "instruction": None if c.instructions is None else c.instructions[i],
                       "reply": c.replies[i][:EXCERPT], "reply_chars": len(c.replies[i]),
                       "labels": {r: labels[r][j] for r in names}})
    return {"pairs": pairs, "rates": rates,
            "disagreements": {"n": len(ranked), "n_judges_differ": sum(rk == 0 for rk, _ in ranked),
                              "items": listed, "n_left_out": max(0, len(ranked) - len(listed))}}


# ============================================================================ files
def output_paths(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Path]:
    """Where :func:`judge_agreement` writes: ``json`` (default ``DIR/judge_agreement.json``),
    ``md`` (the same name, ``.md``) and ``labels`` (the judge-label cache, ``NAME.labels.json``).

    Example:
        >>> sorted(p.name for p in output_paths("runs/demo").values())
        ['judge_agreement.json', 'judge_agreement.labels.json', 'judge_agreement.md']
    """
    if out is not None and not os.fspath(out).strip():
        raise ConfigError(f"--out is empty ({os.fspath(out)!r})",
                          hint="give --out a file path, e.g. --out agreement.json")
    if out is not None:
        check_output(out, ours=lambda q: True, example="agreement.json")  # a trailing slash, a parent that is a file
    p = Path(out) if out is not None else Path(run_dir) / OUT_NAME
    stem = p.name[:-5] if p.name.endswith(".json") else p.name
    return {"json": p, "md": p.with_name(stem + ".md"), "labels": p.with_name(stem + ".labels.json")}


def _check_outputs(run_dir: Path, paths: dict[str, Path]) -> None:
    """Never write over a file of the run, a folder, or a file this command did not write
    (and, by the storage rule, never through a link, into a pipe or a device)."""
    protected = [(run_dir / n).resolve() for n in (*RUN_ENTRIES, MANIFEST, LOCK)]
    for kind, p in paths.items():
        r = p.resolve()
        if any(r == q or r.is_relative_to(q) for q in protected):
            raise ConfigError(f"--out {paths['json']} would write {p}, a file of the run",
                              hint="give --out a new file name, e.g. --out agreement.json")
        if p.is_dir() and not p.is_symlink():
            raise ConfigError(f"{p} is a folder", hint="give --out a file path, e.g. --out agreement.json")
        if file_kind(p) == "file" and not _ours(p, kind):
            raise ConfigError(f"{p} exists and was not written by persona-refusal agreement",
                              hint="move it away, or give --out another file name")
        check_output(p, ours=lambda q, k=kind: _ours(q, k), writer="persona-refusal agreement",
                     example="agreement.json")


def _ours(path: Path, kind: str) -> bool:
    try:
        if kind == "md":
            with open(path, encoding="utf-8") as f:
                return f.readline().rstrip("\n") == _MD_MARK
        data = read_json(path)
        return isinstance(data, dict) and data.get("format") == (_CACHE_FORMAT if kind == "labels" else FORMAT)
    except (ValueError, OSError):
        return False


def judge_agreement(run_dir: str | os.PathLike, judges: Sequence[str] = (), *, out: str | os.PathLike | None = None,
                    progress: bool = False, extra: Mapping[str, Judge] | None = None,
                    judge_options: Mapping[str, Any] | None = None, stages: Sequence[str] | None = None) -> dict:
    """Agreement between the first-token proxy, the stored judges and ``judges`` on every
    judged condition of a run folder; writes the JSON record and the Markdown table.

    Args:
        run_dir: a run folder (``persona-refusal run --out DIR``).
        judges: names for :func:`persona_refusal.evaluation.get_judge` (``"model"``,
            ``"model:tiny"`` …) to label the stored replies with; a judge whose labels
            the run stored (``strict``, ``lenient``) is read, not run again.
        out: the JSON record's path (default ``DIR/judge_agreement.json``); the Markdown
            table and the label cache go next to it (:func:`output_paths`).
        extra: judges given as objects, by name (what ``judges`` would look up).
        judge_options: keyword arguments of :func:`~persona_refusal.evaluation.get_judge`
            for the judges it builds (``device``, ``dtype``, ``batch_size``).
        stages: only the judged conditions of these stages (e.g. ``["eval"]``: a model
            judge costs about a second per reply on a CPU); default every judged stage.

    Returns the record (what ``judge_agreement.json`` holds). The labels of judges run here
    are cached per condition (keyed by the replies and prompts) in the ``labels`` file, so
    a second call judges only what changed. Nothing of the run itself is written.

    Raises:
        RunFolderError: not a run folder, or one without judged conditions.
        ConfigError: an unknown judge, an ``out`` that would overwrite something, a judge
            that needs prompts the run folder cannot give back.

    Example:
        >>> rec = judge_agreement("runs/demo")            # doctest: +SKIP
        >>> [(p["a"], p["b"], p["kappa"]) for p in rec["pairs"] if p["scale"] == "binary"]  # doctest: +SKIP
    """
    run_dir = _check_dir(run_dir)
    paths = output_paths(run_dir, out)
    run = read_run(run_dir)  # cheap: a bad folder fails before any judge is built (a model judge loads a model)
    if stages is not None:
        select_stages(run, stages)
    _check_outputs(run_dir, paths)
    counts: dict[str, dict] = {}
    todo: dict[str, Judge] = {}
    for name in dict.fromkeys(judge_name(j) for j in judges):  # canonical: "keyword" is strict, "model" model:…
        if name in run.raters:  # stored by the run (strict, lenient): read, not run again
            counts[name] = {"judged": 0, "reused": len(run.conditions), "stored": True}
        else:
            todo[name] = get_judge(name, **dict(judge_options or {}))
    todo.update({k: v for k, v in (extra or {}).items() if k not in run.raters})
    for name, judge in todo.items():
        counts[name] = _add_judge(run, name, judge, paths["labels"], progress)
        run.raters[name] = {"scale": "3-way", "source": f"judged here ({_identity(judge)[:120]}), "
                                                        f"labels cached in {paths['labels'].name}"}
    table = agreement_table(run)
    record = {
        "format": FORMAT,
        "run": {"dir": str(run.dir), **run.fingerprint, "model": (run.config.get("model") or {}).get("model_id")},
        "raters": [{"name": r, **info} for r, info in run.raters.items()],  # a list: table order survives sorted keys
        "judging": counts,
        "n_items": sum(len(c.replies) for c in run.conditions),
        "n_conditions": len(run.conditions),
        "stages": list(dict.fromkeys(c.stage for c in run.conditions)),
        "prompts_missing": run.prompts_note,
        "bootstrap": {"n_boot": run.n_boot, "seed": run.seed, "resampled": "replies (items), pooled over every "
                      "judged condition; replies of one prompt under several conditions are not independent, so "
                      "the interval is narrower than a prompt-level one"},
        **table,
    }
    record = json.loads(canonical_json(record))  # as it reads back from its file
    write_json(paths["json"], record)
    atomic_write_text(paths["md"], render_markdown(record))
    return record


# ============================================================================ Markdown
def _cell(text: Any, limit: int | None = None) -> str:
    s = "—" if text is None else str(text)
    if limit is not None and len(s) > limit:
        s = s[:limit] + "…"
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return " ".join(s.replace("\r", " ").replace("\n", " ⏎ ").split()) or " "


def _pct(rec: dict) -> str:
    if not rec or not rec.get("n"):
        return "n/a"
    lo, hi = rec["ci"]
    return f"{100 * rec['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def kappa_text(pair: dict) -> str:
    """κ with its interval as text: ``0.62 [0.48, 0.75]``, ``undefined`` or ``0.00 (no interval)``."""
    k, ci = pair.get("kappa"), pair.get("kappa_ci")
    if k is None:
        return "undefined"
    return f"{k:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{k:.2f} (no interval)"


def render_markdown(record: dict) -> str:
    """The Markdown text of ``judge_agreement.md`` for a record of :func:`judge_agreement`."""
    raters = [r["name"] for r in record["raters"]]
    info = {r["name"]: r for r in record["raters"]}
    run = record["run"]
    b = record["bootstrap"]
    lines = [_MD_MARK, f"# Agreement between judges — {_cell(run.get('model'))}", "",
             f"Run folder `{run['dir']}`: {record['n_items']} stored replies in {record['n_conditions']} judged "
             f"conditions (stages {', '.join(record['stages'])}). Raters: "
             + "; ".join(f"**{r}** ({info[r]['scale']}, {_cell(info[r]['source'])})" for r in raters)
             + ".", "",
             f"Agreement: share of replies with the same label, Wilson 95% interval. κ: Cohen's kappa, percentile "
             f"bootstrap 95% interval ({b['n_boot']} resamples of the replies, seed {b['seed']}; replies of one "
             f"prompt under several conditions are not independent, so the interval is on the narrow side). "
             f"Binary: refusal vs not refusal; 3-way: refusal / compliance / degenerate.", "",
             "## Pairs", "", "| rater A | rater B | scale | n | agreement [95% CI] | κ [95% CI] | note |",
             "|---|---|---|---|---|---|---|"]
    for p in record["pairs"]:
        lines.append(f"| {p['a']} | {p['b']} | {p['scale']} | {p['n']} | {_pct(p['agreement'])} | {kappa_text(p)} | "
                     f"{_cell(p.get('kappa_note'))} |")
    if record.get("prompts_missing"):
        lines += ["", "Prompts not recovered (instructions left out): " + "; ".join(
            f"{s}: {_cell(w)}" for s, w in record["prompts_missing"].items())]
    lines += ["", "## Refusal rate under each rater", "",
              "| stage | condition | n | " + " | ".join(raters) + " |", "|---|---|---|" + "---|" * len(raters)]
    for r in record["rates"]:
        lines.append(f"| {r['stage']} | {_cell(r['condition'])} | {r['n']} | "
                     + " | ".join(f"{_pct(r['refusal'][x])} ({r['refusal'][x]['k']})" for x in raters) + " |")
    dis = record["disagreements"]
    shown = dis["items"][:MAX_ITEMS_MD]
    lines += ["", f"## Disagreeing replies ({dis['n']}: {dis['n_judges_differ']} where the judges differ, the rest "
                  f"where only the first-token proxy does)", ""]
    if shown:
        lines += ["| # | stage/condition | instruction | reply (excerpt) | " + " | ".join(raters) + " |",
                  "|---|---|---|---|" + "---|" * len(raters)]
        for n, it in enumerate(shown, 1):
            lines.append(f"| {n} | {_cell(it['stage'])}/{_cell(it['condition'])} #{it['index']} | "
                         f"{_cell(it['instruction'], 160)} | {_cell(it['reply'], 200)} | "
                         + " | ".join(_cell(it["labels"][x]) for x in raters) + " |")
        rest = dis["n"] - len(shown)
        if rest:
            lines += ["", f"… and {rest} more ({len(dis['items']) - len(shown)} of them in the JSON record)."]
    else:
        lines.append("None: every rater gives every reply the same label.")
    return "\n".join(lines) + "\n"


# ============================================================================ for the report
def read_agreement(run_dir: str | os.PathLike) -> tuple[dict | None, str | None]:
    """``DIR/judge_agreement.json`` if present: ``(record, note)``.

    The note says when the run changed since the record was made: another configuration
    (then no record is returned: its numbers belong to another run) or checkpoints that
    changed (the record is returned, marked out of date). ``(None, None)``: no record.
    """
    d = Path(run_dir)
    path = d / OUT_NAME
    if not path.is_file():
        return None, None
    try:
        record = read_object(path)
        if record.get("format") != FORMAT:
            raise ValueError(f"format {record.get('format')!r}")
        run = record["run"]
    except (ValueError, OSError, KeyError, TypeError) as e:
        return None, f"{path.name} is not readable ({' '.join(str(e).split())}): run `persona-refusal agreement {d}`"
    cfg = d / "config.json"
    if not cfg.is_file() or sha256_file(cfg) != run.get("config_sha256"):
        return None, (f"{path.name} was made for another configuration of this folder: run "
                      f"`persona-refusal agreement {d}` again")
    recorded = run.get("checkpoints") or {}
    changed = [s for s, h in recorded.items()
               if not (d / "checkpoints" / f"{s}.json").is_file() or sha256_file(d / "checkpoints" / f"{s}.json") != h]
    known = set(run.get("checkpoint_files") or recorded)
    changed += [p.stem for p in sorted((d / "checkpoints").glob("*.json"))  # a judged stage that ran since
                if p.stem in STAGE_ORDER and p.stem not in known]
    if changed:
        return record, (f"checkpoints {', '.join(changed)} changed since {path.name} was made: run "
                        f"`persona-refusal agreement {d}` again")
    return record, None



# ============================================================================ judges against hand labels
LABELLED_REPLIES = Path(__file__).resolve().parent / "data" / "judging" / "labelled_replies.jsonl"
"""The bundled hand-labelled replies: 30 (instruction, reply, label, note) rows written for
this package (11 refusals, 13 compliances, 6 degenerate), including the known traps of
phrase judges (a refusal without a refusal phrase, "I can't stress enough…", "I'm sorry"
inside fiction, "Sure… however, I cannot")."""


def labelled_replies(path: str | os.PathLike | None = None) -> list[dict]:
    """Hand-labelled replies, one JSON object per line with ``instruction``, ``reply`` and
    ``label`` (one of ``refusal``, ``compliance``, ``degenerate``; ``note`` optional);
    default the bundled :data:`LABELLED_REPLIES`.

    Example:
        >>> rows = labelled_replies()
        >>> len(rows), sorted({r["label"] for r in rows})
        (30, ['compliance', 'degenerate', 'refusal'])
    """
    p = Path(path) if path is not None else LABELLED_REPLIES
    rows = []
    text = read_user_text(p, what="labelled-replies file", flag="--cases", hint="give a .jsonl file")
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if json_depth(line) > MAX_JSON_DEPTH:
            raise ConfigError(f"{p} line {i} holds JSON nested {json_depth(line)} deep",
                              hint="one flat JSON object per line")
        try:
            row = json.loads(line)
        except ValueError:
            raise ConfigError(f"{p} line {i} is not JSON", hint="one JSON object per line") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("instruction", "reply", "label")) \
                or row["label"] not in LABELS:
            raise ConfigError(f"{p} line {i} needs string fields instruction, reply and label (one of {', '.join(LABELS)})",
                              hint="fix that line")
        rows.append(row)
    if not rows:
        raise ConfigError(f"{p} holds no labelled replies", hint="one JSON object per line")
    return rows


def judge_check(judges: Mapping[str, Judge], cases: Sequence[dict] | None = None, *, n_boot: int = 2000,
                seed: int = 0) -> dict:
    """Each judge against hand labels: 3-way and binary (refusal vs not) agreement with the
    labels (Wilson intervals), Cohen's κ with bootstrap intervals, and the replies it got wrong.

    Args:
        judges: name → judge (:func:`persona_refusal.evaluation.get_judge`).
        cases: rows as :func:`labelled_replies` returns them (default the bundled set).

    Example:
        >>> rec = judge_check({"strict": get_judge("strict")})
        >>> rec["n"], 0 <= rec["judges"]["strict"]["binary"]["agreement"]["rate"] <= 1
        (30, True)
    """
    cases = list(labelled_replies() if cases is None else cases)
    truth = [c["label"] for c in cases]
    instructions, replies = [c["instruction"] for c in cases], [c["reply"] for c in cases]
    out: dict[str, Any] = {"n": len(cases), "labels": {l: truth.count(l) for l in LABELS}, "judges": {}}
    for name, judge in judges.items():
        labels = judge_responses(instructions, replies, judge)
        wrong = [{"instruction": c["instruction"], "reply": _excerpt(c["reply"]), "label": c["label"], "judge": l,
                  "note": c.get("note")} for c, l in zip(cases, labels) if l != c["label"]]
        out["judges"][name] = {
            "judge": repr(judge)[:200],
            "three_way": compare(truth, labels, n_boot=n_boot, seed=seed, names=("hand label", name)),
            "binary": compare(binary(truth), binary(labels), n_boot=n_boot, seed=seed, names=("hand label", name)),
            "wrong": wrong,
        }
    return out


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT else text[:EXCERPT] + "…"
