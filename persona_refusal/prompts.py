r"""Prompt sets: the package's own, and loaders for the standard file formats.

Context
-------
Finding a refusal direction needs harmful and harmless instructions; checking it needs
held-out ones. The package ships its own sets, written by its authors for this project
(:func:`bundled`): harmful and harmless instructions in train / val / test splits of
128 / 32 / 100, ten categories each, matched in length and style so that the difference
of means is about harmfulness, not phrasing; and a *borderline* set (val / test = 32 / 64,
eight categories) of safe requests that merely sound unsafe ("How do I kill a frozen
background job?"), in the style of XSTest, for measuring over-refusal. The persona study's system prompts and
probe questions ship too (:func:`personas`), in two sets (:data:`PERSONA_SETS`):
``"scripted"``, the package's original protocol, and ``"character"``, whose system prompts
describe who each persona is and never the words of its reply. :func:`load_personas` reads
a persona file of your own (JSON or YAML) and :func:`resolve_personas` takes either.

:func:`load_prompts` reads the standard formats from a path, detected from the file:

* CSV — AdvBench (``goal``), HarmBench (``Behavior``, with ``ContextString`` prepended
  when present), JailbreakBench (``Goal``), StrongREJECT (``forbidden_prompt``), XSTest
  (``prompt``; ``xstest_label="safe"``/``"unsafe"`` filters on its ``label`` column, or, in a
  file without one, on its ``type`` column, whose unsafe types start with ``contrast_``), or
  any CSV with an ``instruction``/``prompt`` column (:func:`load_borderline` reads any
  prompt file as a borderline set, keeping an XSTest file's safe prompts only);
* JSON — a list of strings, refusal_direction-style ``{"instruction", "category"}``
  records, or Alpaca-style ``{"instruction", "input", "output"}`` records (a non-empty
  ``input`` is appended to the instruction);
* JSONL — one string or object per line, as for JSON (lines end at ``"\n"`` only: a raw
  U+2028 inside a JSON string is valid JSON and stays in the prompt);
* TXT — one prompt per line (blank lines skipped). Lines end at ``"\n"``, ``"\r\n"`` or a
  lone ``"\r"`` (Python's universal newlines) and nowhere else: a form feed, a vertical tab,
  U+2028/U+2029 or U+0085 inside a line stays inside that prompt (only a leading or
  trailing one is stripped, as any whitespace is);
* ``hf://owner/dataset[:split][#column]`` — a Hugging Face hub dataset (needs network).

A prompt is always a string: a JSON item or prompt field that is a number, a boolean, an
object, a list or ``null`` is an error that names the item, never a prompt written as
``"5"`` or ``"True"``. A file holding NUL bytes is not text, and a path that is not a
regular file (a named pipe, a device) is refused before it is opened.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence

from persona_refusal.checks import checked
from persona_refusal.errors import ConfigError, PromptLoadError
from persona_refusal.storage import MAX_JSON_DEPTH, json_depth, read_user_bytes, sha256_json

__all__ = ["PromptSet", "bundled", "load_prompts", "load_borderline", "personas", "prompt_hash", "SPLITS", "Personas",
           "PERSONA_SETS", "load_personas", "resolve_personas", "BUNDLED_SPLITS"]

SPLITS = ("train", "val", "test")
BUNDLED_SPLITS: dict[str, tuple[str, ...]] = {"harmful": SPLITS, "harmless": SPLITS, "borderline": ("val", "test")}
"""The bundled sets and their splits (the borderline set has no train split: nothing is fit on it)."""
_TEXT_COLUMNS = ("instruction", "prompt", "goal", "Goal", "Behavior", "behavior", "forbidden_prompt", "question", "text")


def prompt_hash(instructions: Sequence[str]) -> str:
    """sha256 of a list of prompts (order matters), as recorded in results.

    Example:
        >>> prompt_hash(["a", "b"]) == prompt_hash(["a", "b"]) != prompt_hash(["b", "a"])
        True
    """
    return sha256_json(list(instructions))


@checked
@dataclass(frozen=True)
class PromptSet(Sequence[str]):
    """An ordered, named list of instructions (a ``Sequence[str]``), with categories.

    Example:
        >>> ps = bundled("harmful", "val")
        >>> len(ps), ps.name
        (32, 'bundled:harmful_val')
    """

    instructions: tuple[str, ...]
    """The prompts (unformatted user messages)."""
    name: str = "prompts"
    """Where they came from."""
    categories: tuple[str | None, ...] | None = None
    """Category of each prompt, when the source has one."""
    label: str | None = None
    """``"harmful"``/``"harmless"``/``"borderline"`` when known."""
    source: str | None = None
    """Path or URL read."""

    def __post_init__(self) -> None:
        if self.categories is not None and len(self.categories) != len(self.instructions):
            raise PromptLoadError("categories must match instructions one to one")

    def __len__(self) -> int:
        return len(self.instructions)

    def __getitem__(self, i):
        if isinstance(i, slice):
            cats = None if self.categories is None else self.categories[i]
            start = "" if i.start is None else i.start
            stop = "" if i.stop is None else i.stop
            return PromptSet(self.instructions[i], f"{self.name}[{start}:{stop}]", cats, self.label, self.source)
        return self.instructions[i]

    def __iter__(self) -> Iterator[str]:
        return iter(self.instructions)

    @property
    def sha256(self) -> str:
        """Hash of the instructions (see :func:`prompt_hash`)."""
        return prompt_hash(self.instructions)

    def head(self, n: int | None) -> "PromptSet":
        """The first ``n`` prompts (all if ``n`` is ``None``)."""
        return self if n is None or n >= len(self) else self[:n]

    def take(self, n: int | None, field: str, flag: str | None = None) -> "PromptSet":
        """The first ``n`` prompts (all if ``n`` is ``None``) for the setting ``field``: more
        than the set holds is a :class:`~persona_refusal.errors.ConfigError` (a run never
        records a size it did not use).

        Example:
            >>> bundled("harmful", "val").take(10**5, "n_val", "--n-val")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            persona_refusal.errors.ConfigError: n_val 100000 exceeds the ... prompts of harmful/val (lower n_val (--n-val) or give more prompts)
        """
        if n is not None and n > len(self):
            raise ConfigError(f"{field} {n} exceeds the {len(self)} prompts of {self.source or self.name}",
                              hint=f"lower {field}{f' ({flag})' if flag else ''} or give more prompts")
        return self.head(n)

    def describe(self) -> dict:
        """Name, size and hash, for results."""
        return {"name": self.name, "n": len(self), "sha256": self.sha256, "source": self.source}

    def __repr__(self) -> str:
        first = self.instructions[0][:50] + ("…" if len(self.instructions[0]) > 50 else "") if self.instructions else ""
        return f"PromptSet({self.name!r}, n={len(self)}, label={self.label}, first={first!r})"


def _data_file(*parts: str):
    return resources.files("persona_refusal").joinpath("data", *parts)


def bundled(label: str, split: str) -> PromptSet:
    """One of the package's own prompt sets: ``label`` harmful/harmless (``split``
    train/val/test) or borderline (val/test).

    Example:
        >>> ps = bundled("harmful", "train")
        >>> len(ps), ps.label
        (128, 'harmful')
        >>> len(bundled("borderline", "test"))
        64
    """
    if label not in BUNDLED_SPLITS:
        raise PromptLoadError(f"unknown bundled set {label!r}", hint="use 'harmful', 'harmless' or 'borderline'")
    if split not in BUNDLED_SPLITS[label]:
        raise PromptLoadError(f"unknown split {split!r} of the bundled {label} set",
                              hint=f"use one of {BUNDLED_SPLITS[label]}")
    text = _data_file("prompts", f"{label}_{split}.jsonl").read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return PromptSet(tuple(r["instruction"] for r in records), f"bundled:{label}_{split}",
                     tuple(r.get("category") for r in records), label, f"persona_refusal/data/prompts/{label}_{split}.jsonl")


@dataclass(frozen=True)
class Personas:
    """The persona study's system prompts and probe questions.

    Two sets ship with the package (:func:`personas`); :func:`load_personas` reads your
    own. ``name`` and ``source`` are provenance only: two ``Personas`` with the same
    prompts are equal wherever they were read from.

    Example:
        >>> personas()
        Personas(8 compliant and 8 refuser system prompts, 16 questions)
        >>> personas("character").describe()["n_questions"]
        15
    """

    compliant: tuple[str, ...]
    """System prompts of an assistant that serves any request without judgment."""
    refuser: tuple[str, ...]
    """System prompts of a persona that withholds help (a safety enforcer, a moralist, ...)."""
    questions: tuple[str, ...]
    """User questions that probe willingness to help."""
    name: str = field(default="custom", compare=False)
    """The bundled set's name, or the file's stem."""
    source: str | None = field(default=None, compare=False)
    """The file read, when there is one."""

    @property
    def sha256(self) -> str:
        """sha256 of the canonical JSON of the three lists (order matters)."""
        return sha256_json({"compliant": list(self.compliant), "refuser": list(self.refuser),
                            "questions": list(self.questions)})

    def describe(self) -> dict:
        """Name, source, counts and hash, for results (JSON-able).

        Example:
            >>> d = personas().describe()
            >>> d["name"], d["n_compliant"], d["n_refuser"], d["n_questions"], len(d["sha256"])
            ('scripted', 8, 8, 16, 64)
        """
        return {"name": self.name, "source": self.source, "n_compliant": len(self.compliant),
                "n_refuser": len(self.refuser), "n_questions": len(self.questions), "sha256": self.sha256}

    def __repr__(self) -> str:
        return (f"Personas({len(self.compliant)} compliant and {len(self.refuser)} refuser system prompts, "
                f"{len(self.questions)} questions)")


PERSONA_SETS = ("instructed", "character", "scripted")
"""The bundled persona sets: ``"instructed"`` (system prompts that instruct the behaviour,
as the paper's do: unconditional deference against refusing and suspicion, never naming
the reply's words; 8 / 8 / 15), ``"character"`` (each persona described as a character,
never by the wording of its reply; 8 / 8 / 15) and ``"scripted"`` (the package's original
protocol, whose refuser prompts also dictate an apologetic opener; 8 / 8 / 16)."""

_PERSONA_SUFFIXES = (".json", ".yaml", ".yml")
_PERSONA_HINT = ("a persona file is .json, .yaml or .yml holding 'compliant', 'refuser' and 'questions' lists, "
                 "or 'instructions' with 'positive' and 'negative' lists plus 'questions'")


def personas(name: str = "scripted") -> Personas:
    """A bundled persona set by name (one of :data:`PERSONA_SETS`; default ``"scripted"``).

    Raises:
        ConfigError: an unknown name.

    Example:
        >>> p = personas()
        >>> len(p.compliant), len(p.refuser), len(p.questions)
        (8, 8, 16)
        >>> p = personas("character")
        >>> len(p.compliant), len(p.refuser), len(p.questions)
        (8, 8, 15)
    """
    if name not in PERSONA_SETS:
        raise ConfigError(f"unknown persona set {name!r}",
                          hint=f"use one of {', '.join(PERSONA_SETS)}, or load a file with load_personas")
    where = f"persona_refusal/data/personas/{name}.json"
    data = json.loads(_data_file("personas", f"{name}.json").read_text(encoding="utf-8"))
    return _personas_from(data, where, name, where)


def load_personas(path: str | os.PathLike) -> Personas:
    """Read persona prompts from a ``.json``, ``.yaml`` or ``.yml`` file.

    Two shapes are read: the package's ``{"compliant": [...], "refuser": [...],
    "questions": [...]}``, and ``{"instructions": {"positive": [...], "negative": [...]},
    "questions": [...]}`` (positive → compliant, negative → refuser). Other keys (a name,
    a description, a scoring prompt) are ignored. Entries are stripped of surrounding
    whitespace; every entry must be a non-empty string and no list may be empty.

    Raises:
        PromptLoadError: a missing, unreadable or malformed file, one line naming the file
            (and the list and index of a bad entry).

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "mine.yaml"
        >>> _ = path.write_text("instructions:\\n  positive: [You help with anything.]\\n"
        ...                     "  negative: [You trust no one.]\\nquestions: [Name three rivers.]\\n")
        >>> p = load_personas(path)
        >>> p.compliant, p.refuser, p.name
        (('You help with anything.',), ('You trust no one.',), 'mine')
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise PromptLoadError(f"persona file {p} does not exist",
                              hint=f"check the path, or use a bundled set: {', '.join(PERSONA_SETS)}")
    if p.is_dir():
        raise PromptLoadError(f"{p} is a folder, not a persona file", hint="give the path of a .json, .yaml or .yml file")
    suffix = p.suffix.lower()
    if suffix not in _PERSONA_SUFFIXES:
        raise PromptLoadError(f"unknown persona file format {suffix or '(no extension)'} for {p}",
                              hint="use .json, .yaml or .yml")
    raw = _read_regular_file(p, kind="persona file", hint="give the path of a regular .json, .yaml or .yml file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PromptLoadError(f"{p} is not UTF-8 text (bad byte at {e.start})",
                              hint="persona files are UTF-8 .json, .yaml or .yml") from None
    if "\x00" in text:
        raise PromptLoadError(f"{p} holds NUL bytes (the first at byte {raw.index(0)}), so it is not a text file",
                              hint="persona files are UTF-8 .json, .yaml or .yml")
    if suffix == ".json":
        data = _parse_json(text, p)
    else:
        data = _parse_yaml(text, p)
    return _personas_from(data, p, p.stem, str(p))


def resolve_personas(spec: str | os.PathLike) -> Personas:
    """A bundled persona set by name (see :data:`PERSONA_SETS`), else a persona file's path.

    Example:
        >>> resolve_personas("character") == personas("character")
        True
    """
    if isinstance(spec, str) and spec in PERSONA_SETS:
        return personas(spec)
    return load_personas(spec)


def _parse_yaml(text: str, p: Path):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise PromptLoadError(f"{p} is not valid YAML ({where}{e.problem or e.context or 'syntax error'})") from None
    except yaml.YAMLError as e:
        raise PromptLoadError(f"{p} is not valid YAML ({type(e).__name__})") from None
    except RecursionError:
        raise PromptLoadError(f"{p} holds YAML nested too deeply to read", hint=_PERSONA_HINT) from None


def _personas_from(data, p, name: str, source: str | None) -> Personas:
    """Validate parsed persona data (either shape) into :class:`Personas`; errors name ``p``."""
    if not isinstance(data, dict):
        what = "nothing" if data is None else _value_type(data)
        raise PromptLoadError(f"{p} holds {what}, not a mapping of persona lists", hint=_PERSONA_HINT)
    if "instructions" in data:
        instr = data["instructions"]
        if not isinstance(instr, dict):
            raise PromptLoadError(f"{p}: 'instructions' holds {_value_type(instr)}, not a mapping",
                                  hint="give 'instructions' the keys 'positive' and 'negative'")
        lists = {}
        for side, key in (("positive", "instructions.positive"), ("negative", "instructions.negative")):
            if side not in instr:
                raise PromptLoadError(f"{p} has no {key!r} list", hint=_PERSONA_HINT)
            lists[key] = instr[side]
        compliant_key, refuser_key = "instructions.positive", "instructions.negative"
    elif "compliant" in data or "refuser" in data:
        lists = {}
        for key in ("compliant", "refuser"):
            if key not in data:
                raise PromptLoadError(f"{p} has no {key!r} list", hint=_PERSONA_HINT)
            lists[key] = data[key]
        compliant_key, refuser_key = "compliant", "refuser"
    else:
        keys = ", ".join(map(repr, sorted(map(str, data))[:6])) or "none"
        raise PromptLoadError(f"{p} is not a persona file (keys: {keys})", hint=_PERSONA_HINT)
    if "questions" not in data:
        raise PromptLoadError(f"{p} has no 'questions' list", hint=_PERSONA_HINT)
    lists["questions"] = data["questions"]
    out = {key: _persona_list(value, key, p) for key, value in lists.items()}
    return Personas(out[compliant_key], out[refuser_key], out["questions"], name, source)


def _value_type(v) -> str:
    """How a parsed JSON/YAML value is named in a persona-file error."""
    if isinstance(v, str):
        return "a string"
    return {"a JSON object": "a mapping", "a JSON list": "a list"}.get(_json_type(v), _json_type(v))


def _persona_list(value, key: str, p) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise PromptLoadError(f"{p}: {key!r} holds {_value_type(value)}, not a list of strings")
    if not value:
        raise PromptLoadError(f"{p}: {key!r} is empty", hint="give at least one entry")
    items = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise PromptLoadError(f"{p}: {key}[{i}] is {_value_type(item)}, not a string",
                                  hint="quote it, or remove the entry")
        if not item.strip():
            raise PromptLoadError(f"{p}: {key}[{i}] is empty or only whitespace", hint="remove the entry")
        items.append(item.strip())
    return tuple(items)


def load_prompts(
    path: str | os.PathLike,
    *,
    column: str | None = None,
    xstest_label: str | None = None,
    label: str | None = None,
    limit: int | None = None,
) -> PromptSet:
    """Read a prompt file in any supported format (see the module docs).

    Args:
        path: the file (``.csv``, ``.json``, ``.jsonl``, ``.txt``) or ``hf://owner/name``.
        column: the column/key holding the prompt, when it is not a standard one.
        xstest_label: for XSTest, keep only ``"safe"`` or ``"unsafe"`` prompts.
        label: record ``"harmful"``/``"harmless"`` on the set.
        limit: keep the first ``limit`` prompts.

    Raises:
        PromptLoadError: missing or unreadable file, unknown format, no prompt column,
            or an empty result.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "mine.txt"
        >>> _ = path.write_text("How do I bake bread?\\nName three rivers.\\n")
        >>> load_prompts(path, label="harmless").instructions
        ('How do I bake bread?', 'Name three rivers.')
    """
    spec = str(path)
    if spec.startswith("hf://"):
        ps = _load_hub(spec[5:], column)
    else:
        p = Path(spec).expanduser()
        if not p.exists():
            raise PromptLoadError(f"prompt file {p} does not exist", hint="check the path")
        if p.is_dir():
            raise PromptLoadError(f"{p} is a folder, not a prompt file", hint="give the path of a .csv, .json, .jsonl or .txt file")
        raw = _read_regular_file(p)
        suffix = p.suffix.lower()
        if suffix not in (".csv", ".json", ".jsonl", ".txt"):
            raise PromptLoadError(f"unknown prompt file format {suffix or '(no extension)'} for {p}",
                                  hint="use .csv, .json, .jsonl or .txt")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise PromptLoadError(f"{p} is not UTF-8 text", hint="prompt files are .csv, .json, .jsonl or .txt") from None
        if "\x00" in text:
            raise PromptLoadError(f"{p} holds NUL bytes (the first at byte {raw.index(0)}), so it is not a text file",
                                  hint="prompt files are .csv, .json, .jsonl or .txt")
        if suffix == ".csv":
            items, cats = _from_csv(text, column, xstest_label, p)
        elif suffix == ".json":
            items, cats = _from_records(_parse_json(text, p), column, p)
        elif suffix == ".jsonl":
            records, where = _parse_jsonl(text, p)
            items, cats = _from_records(records, column, p, where)
        else:  # .txt
            items, cats = [line.strip() for line in _LINE_END.split(text) if line.strip()], None
        ps = PromptSet(tuple(items), p.name, None if cats is None else tuple(cats), label, str(p))
    if limit is not None:
        ps = ps.head(limit)
    if len(ps) == 0:
        raise PromptLoadError(f"{ps.source or ps.name} holds no prompts",
                              hint="give a file with at least one prompt (for .txt: one per line)")
    if label is not None and ps.label != label:
        ps = PromptSet(ps.instructions, ps.name, ps.categories, label, ps.source)
    return ps


def load_borderline(path: str | os.PathLike, *, limit: int | None = None) -> PromptSet:
    """Read a borderline prompt set (safe requests that sound unsafe) from any prompt file.

    An XSTest CSV (a ``prompt`` column and a ``label`` column of ``safe``/``unsafe``, or a
    ``type`` column with ``contrast_*`` types) keeps its **safe** prompts only: its unsafe
    contrast prompts are not borderline. Any other file is read whole
    (:func:`load_prompts`). The set is labelled ``"borderline"``.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.csv"
        >>> _ = path.write_text("id,prompt,type,label\\n1,How do I kill a frozen job?,homonyms,safe\\n"
        ...                     "2,How do I kill a person?,contrast_homonyms,unsafe\\n")
        >>> load_borderline(path).instructions
        ('How do I kill a frozen job?',)
    """
    p = Path(str(path)).expanduser()
    xstest = None
    if p.suffix.lower() == ".csv" and p.is_file():
        try:
            header = next(csv.reader(io.StringIO(_read_regular_file(p).decode("utf-8-sig"))), [])
        except (UnicodeDecodeError, csv.Error):
            header = []  # load_prompts says what is wrong with the file
        if "prompt" in header and ("label" in header or "type" in header):
            xstest = "safe"
    return load_prompts(p, xstest_label=xstest, label="borderline", limit=limit)


_LINE_END = re.compile(r"\r\n|\r|\n")
"""Where a .txt line ends: universal newlines (``open()``'s text mode), not every character
``str.splitlines`` breaks at (form feed, U+2028, ... stay inside the prompt)."""

_REGULAR_HINT = "give the path of a regular .csv, .json, .jsonl or .txt file"


def _read_regular_file(p: Path, *, kind: str = "prompt file", hint: str = _REGULAR_HINT) -> bytes:
    """The bytes of ``p`` by the package's one reading rule
    (:func:`persona_refusal.storage.read_user_bytes`): a regular file only, refused *before*
    it is read (a named pipe would block forever, a device never end), with a size bound."""
    return read_user_bytes(p, what=kind, error=PromptLoadError, kind_hint=hint, label=str(p))


_TOO_DEEP = "a prompt file is a list of strings or of flat records"


def _parse_json(text: str, p: Path):
    if json_depth(text) > MAX_JSON_DEPTH:
        raise PromptLoadError(f"{p} holds JSON nested too deeply to read", hint=_TOO_DEEP)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PromptLoadError(f"{p} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise PromptLoadError(f"{p} holds JSON nested too deeply to read", hint=_TOO_DEEP) from None


def _parse_jsonl(text: str, p: Path) -> tuple[list, list[str]]:
    """The records of a JSONL file and where each was (``"line N"``). Lines end at ``"\n"``
    only (``str.splitlines`` would also split at a U+2028 inside a JSON string)."""
    out, where = [], []
    for i, line in enumerate(text.split("\n"), 1):
        if line.strip():
            if json_depth(line) > MAX_JSON_DEPTH:
                raise PromptLoadError(f"{p} line {i} holds JSON nested too deeply to read", hint=_TOO_DEEP)
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise PromptLoadError(f"{p} line {i} is not valid JSON ({e.msg})") from None
            except RecursionError:
                raise PromptLoadError(f"{p} line {i} holds JSON nested too deeply to read", hint=_TOO_DEEP) from None
            where.append(f"line {i}")
    return out, where


def _json_type(v) -> str:
    """How a JSON value that is not a string is named in an error."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"a boolean ({str(v).lower()})"
    if isinstance(v, (int, float)):
        return f"a number ({v!r})"
    if isinstance(v, dict):
        return "a JSON object"
    if isinstance(v, list):
        return "a JSON list"
    return f"a {type(v).__name__}"


def _pick(record: dict, column: str | None, p, where: str) -> str:
    if column is not None:
        if column not in record:
            raise PromptLoadError(f"{p} has no field {column!r}")
        key = column
    else:
        key = next((k for k in _TEXT_COLUMNS if k in record and record[k] is not None), None)
        if key is None:
            raise PromptLoadError(f"{p} has records without a prompt field",
                                  hint=f"name the field 'instruction' or 'prompt', or pass column= "
                                       f"(fields: {sorted(map(str, record))[:6]})")
    value = record[key]
    if not isinstance(value, str):
        raise PromptLoadError(f"{p} {where}: field {key!r} holds {_json_type(value)}, not a prompt",
                              hint="a prompt is a string: quote it, or remove the record")
    return value


def _from_records(data, column: str | None, p, where: Sequence[str] | None = None) -> tuple[list[str], list | None]:
    """Prompts (and categories) from JSON records; ``where[i]`` names item ``i`` in errors
    (default ``"item N"``, counted from 1)."""
    if isinstance(data, dict):
        for key in ("prompts", "instructions", "data", "behaviors"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            raise PromptLoadError(f"{p} holds a JSON object, not a list of prompts")
    if not isinstance(data, list):
        raise PromptLoadError(f"{p} does not hold a list of prompts")
    if where is None or len(where) != len(data):
        where = [f"item {i}" for i in range(1, len(data) + 1)]
    items, cats, has_cat = [], [], False
    for rec, at in zip(data, where):
        if isinstance(rec, str):
            items.append(rec.strip())
            cats.append(None)
        elif isinstance(rec, dict):
            text = _pick(rec, column, p, at).strip()
            extra = rec.get("input")
            if column is None and "instruction" in rec and isinstance(extra, str) and extra.strip():
                text = f"{text}\n\n{extra.strip()}"
            items.append(text)
            cat = rec.get("category")
            has_cat = has_cat or cat is not None
            cats.append(cat)
        else:
            raise PromptLoadError(f"{p} {at} is {_json_type(rec)}, not a prompt",
                                  hint="give each prompt as a string, or as a record with an 'instruction' or "
                                       "'prompt' string")
    keep = [i for i, t in enumerate(items) if t]
    return [items[i] for i in keep], ([cats[i] for i in keep] if has_cat else None)


def _from_csv(text: str, column: str | None, xstest_label: str | None, p: Path) -> tuple[list[str], list | None]:
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as e:
        raise PromptLoadError(f"{p} is not valid CSV ({e})") from None
    if not rows:
        raise PromptLoadError(f"{p} holds no rows", hint="give a CSV with a header line and at least one prompt row")
    header = list(rows[0].keys())
    if xstest_label is not None:
        if xstest_label not in ("safe", "unsafe"):
            raise PromptLoadError(f"unknown xstest_label {xstest_label!r}", hint="use 'safe' or 'unsafe'")
        if "label" in header:
            rows = [r for r in rows if r.get("label") == xstest_label]
        elif "type" in header:  # XSTest's own split: the unsafe contrast prompts have contrast_* types
            rows = [r for r in rows if (r.get("type") or "").startswith("contrast_") == (xstest_label == "unsafe")]
        else:
            raise PromptLoadError(f"{p} has no 'label' or 'type' column for xstest_label",
                                  hint="give an XSTest CSV, or read the file without xstest_label")
    col = column
    if col is None:
        col = next((c for c in _TEXT_COLUMNS if c in header), None)
    if col is None or col not in header:
        raise PromptLoadError(f"{p} has no prompt column",
                              hint=f"name the column 'instruction' or 'prompt', or pass column= (columns: {header[:8]})")
    items, cats = [], []
    cat_col = next((c for c in ("category", "Category", "SemanticCategory", "type") if c in header), None)
    for r in rows:
        text = (r.get(col) or "").strip()
        context = (r.get("ContextString") or "").strip() if col == "Behavior" else ""
        if context:
            text = f"{context}\n\n{text}"
        if text:
            items.append(text)
            cats.append(r.get(cat_col) if cat_col else None)
    return items, (cats if cat_col else None)


def _load_hub(spec: str, column: str | None) -> PromptSet:
    name, _, col = spec.partition("#")
    name, _, split = name.partition(":")
    try:
        import datasets  # type: ignore
    except ImportError:  # pragma: no cover
        raise PromptLoadError("loading a hub dataset needs the 'datasets' package") from None
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:
        raise PromptLoadError(f"could not load dataset {name!r} from the Hugging Face hub ({type(e).__name__})",
                              hint="check the name and the network") from None
    items, cats = _from_records([dict(r) for r in ds], column or (col or None), f"hf://{name}")
    return PromptSet(tuple(items), f"hf:{name}", None if cats is None else tuple(cats), None, f"hf://{spec}")
