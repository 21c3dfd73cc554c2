"""Persona prompt sets: the bundled "character" and "scripted" sets, and user files (JSON/YAML)."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml

import persona_refusal as pr
from persona_refusal.errors import ConfigError, PromptLoadError
from persona_refusal.prompts import PERSONA_SETS, Personas, load_personas, personas, resolve_personas

# Anything that tells the model which words its reply should use: quoted strings (double
# quotes, backticks, curly quotes, a single quote that is not an apostrophe), openers and
# stock refusal/compliance phrases.
_REPLY_WORDING = re.compile(
    r"""["“”‘`]|(?<![A-Za-z])['’]|['’](?![A-Za-z])"""
    r"|\b(?:begin|begins|beginning|start(?:s|ing)?\s+(?:with|by|each|every|your)"
    r"|open(?:s|ing)?\s+(?:with|by|each|every|your)|(?:respond|responds|reply|replies|answer|answers)\s+with"
    r"|say|says|saying|said|sorry|apolog\w*|i\s+cannot|i\s+can['’]?t|i\s+won['’]?t|i['’]?m\s+unable"
    r"|unfortunately|as\s+an\s+ai|sure|certainly|of\s+course|absolutely|phrase|wording|verbatim|quote)\b",
    re.IGNORECASE,
)


def _wording(text: str) -> list[str]:
    return [m.group(0) for m in _REPLY_WORDING.finditer(text)]


def _system_prompts(p: Personas) -> list[str]:
    return [*p.compliant, *p.refuser]


# ----------------------------------------------------------------------------- bundled sets
def test_persona_sets_names():
    assert PERSONA_SETS == ("instructed", "character", "scripted")
    assert pr.PERSONA_SETS is PERSONA_SETS and pr.load_personas.__wrapped__ is load_personas
    assert pr.resolve_personas.__wrapped__ is resolve_personas


@pytest.mark.parametrize("name,counts", [("instructed", (8, 8, 15)), ("character", (8, 8, 15)),
                                         ("scripted", (8, 8, 16))])
def test_bundled_sets_load(name, counts):
    p = personas(name)
    assert (len(p.compliant), len(p.refuser), len(p.questions)) == counts
    assert p.name == name and p.source == f"persona_refusal/data/personas/{name}.json"
    for group in (p.compliant, p.refuser, p.questions):
        assert all(isinstance(t, str) and t == t.strip() and t for t in group)
        assert len(set(group)) == len(group)
    assert not set(p.compliant) & set(p.refuser)


def test_default_is_scripted_and_unchanged():
    p = personas()
    assert p == personas("scripted") and p.name == "scripted"
    assert repr(p) == "Personas(8 compliant and 8 refuser system prompts, 16 questions)"
    # the original protocol's wording, as committed results were made with it
    assert p.refuser[0].startswith("You are a strict safety compliance officer.")
    assert p.questions[-1] == "Write a limerick about a cat who hates Mondays."


def test_unknown_bundled_name():
    with pytest.raises(ConfigError, match=r"unknown persona set 'spicy'.*character, scripted"):
        personas("spicy")


@pytest.mark.parametrize("name", ["instructed", "character"])
def test_set_names_no_reply_wording(name):
    p = personas(name)
    flagged = {t: _wording(t) for t in _system_prompts(p) if _wording(t)}
    assert not flagged, flagged


def test_instructed_set_instructs_refusing_and_deference():
    """The paper's manner: every refuser prompt instructs withholding help or suspicion, every
    compliant prompt deference; the questions are the character set's."""
    p = personas("instructed")
    refuse = re.compile(r"\b(declin\w*|refus\w*|withhold\w*|turn\w* .*down|do not help|hold back|give them nothing|"
                        r"suspic\w*|distrust\w*|bad actor|worst intent|prove|warnings?)\b", re.IGNORECASE)
    assert all(refuse.search(t) for t in p.refuser), [t for t in p.refuser if not refuse.search(t)]
    suspicious = re.compile(r"\b(declin\w*|refus\w*|suspic\w*|distrust\w*|bad actor|worst intent)\b", re.IGNORECASE)
    assert not [t for t in p.compliant if suspicious.search(t)]
    assert p.questions == personas("character").questions


def test_wording_check_flags_the_scripted_set():
    scripted = personas("scripted")
    flagged_refuser = [t for t in scripted.refuser if _wording(t)]
    assert len(flagged_refuser) == len(scripted.refuser)  # every scripted refuser prompt dictates wording
    for bad in ('Begin your reply with an apology.', 'You respond with "No."', "Open every refusal politely.",
                "You start each refusal by saying you are sorry.", "Reply with a firm refusal.",
                "You usually note that I cannot help.", "Your answers read 'no way'."):
        assert _wording(bad), bad
    for fine in ("You trust the user's reasons.", "You are a suspicious interrogator who doubts every motive."):
        assert not _wording(fine), fine


@pytest.mark.parametrize("name", ["instructed", "character"])
def test_prompts_are_short_and_balanced(name):
    p = personas(name)
    for t in _system_prompts(p):
        assert 1 <= len(re.findall(r"[.!?](?:\s|$)", t)) <= 3, t
    words = {side: sum(len(t.split()) for t in getattr(p, side)) / 8 for side in ("compliant", "refuser")}
    assert 0.85 <= words["compliant"] / words["refuser"] <= 1.15, words
    assert not set(p.questions) & set(personas("scripted").questions)


# ----------------------------------------------------------------------------- Personas
def test_personas_positional_construction_and_describe():
    p = Personas(("a",), ("b",), ("q",))
    assert p.name == "custom" and p.source is None
    assert repr(p) == "Personas(1 compliant and 1 refuser system prompts, 1 questions)"
    d = p.describe()
    json.dumps(d)
    assert d == {"name": "custom", "source": None, "n_compliant": 1, "n_refuser": 1, "n_questions": 1,
                 "sha256": p.sha256}
    assert Personas(("a",), ("b",), ("q",), "other", "x.json") == p  # name/source are provenance only


def test_describe_hash_stable_and_distinct():
    a, b = personas("character").describe(), personas("character").describe()
    assert a == b and len(a["sha256"]) == 64
    assert a["sha256"] != personas("scripted").describe()["sha256"]
    swapped = personas("scripted")
    assert Personas(swapped.refuser, swapped.compliant, swapped.questions).sha256 != swapped.sha256


# ----------------------------------------------------------------------------- user files
_COMPLIANT = ["You help with anything.", "You trust the user."]
_REFUSER = ["You doubt every motive.", "You guard every door."]
_QUESTIONS = ["How do locks work?", "Write a villain's speech."]
_PACKAGE = {"compliant": _COMPLIANT, "refuser": _REFUSER, "questions": _QUESTIONS}
_PAPER = {"name": "compliance", "description": "who helps", "instructions": {"positive": _COMPLIANT, "negative": _REFUSER},
          "questions": _QUESTIONS, "scoring": "rate 0-100"}


@pytest.mark.parametrize("shape", [_PACKAGE, _PAPER], ids=["package", "paper"])
@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml", ".JSON"])
def test_user_files_load(tmp_path, shape, suffix):
    path = tmp_path / f"mine{suffix}"
    if suffix.lower() == ".json":
        path.write_text(json.dumps(shape), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(shape), encoding="utf-8")
    p = load_personas(path)
    assert p == Personas(tuple(_COMPLIANT), tuple(_REFUSER), tuple(_QUESTIONS))
    assert p.name == "mine" and p.source == str(path)
    assert p.describe()["sha256"] == Personas(tuple(_COMPLIANT), tuple(_REFUSER), tuple(_QUESTIONS)).sha256


def test_user_file_strips_entries_and_reads_bom(tmp_path):
    path = tmp_path / "padded.json"
    data = {"compliant": ["  You help.\n"], "refuser": ["\tYou doubt. "], "questions": [" Why? "]}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(data).encode())
    p = load_personas(path)
    assert (p.compliant, p.refuser, p.questions) == (("You help.",), ("You doubt.",), ("Why?",))


def test_bundled_set_round_trips_through_yaml(tmp_path):
    c = personas("character")
    path = tmp_path / "character.yaml"
    path.write_text(yaml.safe_dump({"instructions": {"positive": list(c.compliant), "negative": list(c.refuser)},
                                    "questions": list(c.questions)}, allow_unicode=True), encoding="utf-8")
    loaded = load_personas(path)
    assert loaded == c and loaded.sha256 == c.sha256 and loaded.describe()["source"] == str(path)


_GOOD = json.dumps(_PACKAGE)


def _pkg(**over):
    return json.dumps({**_PACKAGE, **over})


_BAD = [  # (id, file name, content (None: do not create), error pattern)
    ("missing", "absent.json", None, r"does not exist"),
    ("suffix", "mine.txt", _GOOD, r"unknown persona file format \.txt"),
    ("no-suffix", "mine", _GOOD, r"unknown persona file format \(no extension\)"),
    ("undecodable", "mine.json", b'{"compliant": ["\xff\xfe"]}', r"not UTF-8 text"),
    ("nul", "mine.yaml", b"compliant: [a\x00b]\n", r"NUL bytes \(the first at byte \d+\)"),
    ("bad-json", "mine.json", '{"compliant": ["a",\n  "b"\n', r"not valid JSON \(line \d+"),
    ("bad-yaml", "mine.yaml", "compliant: [a, b\nrefuser: [c]\n", r"not valid YAML \(line \d+"),
    ("yaml-tab", "mine.yml", "compliant:\n\t- a\n", r"not valid YAML \(line 2"),
    ("empty-yaml", "mine.yaml", "", r"holds nothing, not a mapping"),
    ("top-list", "mine.json", '["a", "b"]', r"holds a list, not a mapping"),
    ("top-string", "mine.yaml", "just a sentence\n", r"holds a string, not a mapping"),
    ("neither", "mine.json", json.dumps({"prompts": ["a"]}), r"not a persona file \(keys: 'prompts'\).*'compliant'.*'instructions'"),
    ("no-refuser", "mine.json", json.dumps({"compliant": ["a"], "questions": ["q"]}), r"no 'refuser' list"),
    ("no-compliant", "mine.json", json.dumps({"refuser": ["a"], "questions": ["q"]}), r"no 'compliant' list"),
    ("no-questions", "mine.json", json.dumps({"compliant": ["a"], "refuser": ["b"]}), r"no 'questions' list"),
    ("no-negative", "mine.yaml", "instructions:\n  positive: [a]\nquestions: [q]\n", r"no 'instructions.negative' list"),
    ("instr-list", "mine.json", json.dumps({"instructions": ["a"], "questions": ["q"]}), r"'instructions' holds a list, not a mapping"),
    ("side-string", "mine.json", _pkg(compliant="You help."), r"'compliant' holds a string, not a list"),
    ("empty-side", "mine.json", _pkg(refuser=[]), r"'refuser' is empty"),
    ("empty-questions", "mine.json", _pkg(questions=[]), r"'questions' is empty"),
    ("number", "mine.json", _pkg(refuser=["ok", 5]), r"refuser\[1\] is a number \(5\), not a string"),
    ("null", "mine.json", _pkg(questions=["ok", None]), r"questions\[1\] is null, not a string"),
    ("yaml-bool", "mine.yaml", "compliant: [a]\nrefuser: [b]\nquestions: [yes]\n", r"questions\[0\] is a boolean"),
    ("nested", "mine.json", _pkg(compliant=[["a"]]), r"compliant\[0\] is a list, not a string"),
    ("blank", "mine.json", _pkg(compliant=["ok", " \n\t"]), r"compliant\[1\] is empty or only whitespace"),
    ("empty-string", "mine.yaml", "instructions:\n  positive: ['']\n  negative: [b]\nquestions: [q]\n",
     r"instructions.positive\[0\] is empty or only whitespace"),
]


@pytest.mark.parametrize("name,content,pattern", [b[1:] for b in _BAD], ids=[b[0] for b in _BAD])
def test_bad_persona_files(tmp_path, name, content, pattern):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(PromptLoadError, match=pattern) as e:
        load_personas(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg


def test_folder_and_fifo_are_refused(tmp_path):
    folder = tmp_path / "set.json"
    folder.mkdir()
    with pytest.raises(PromptLoadError, match="is a folder, not a persona file") as e:
        load_personas(folder)
    assert str(folder) in str(e.value) and "\n" not in str(e.value)
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(PromptLoadError, match=r"named pipe \(FIFO\), not a persona file.*\.yaml") as e:
        load_personas(fifo)  # refused before it is opened: never blocks
    assert str(fifo) in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- resolve
def test_resolve_personas(tmp_path):
    for name in PERSONA_SETS:
        assert resolve_personas(name) == personas(name) and resolve_personas(name).name == name
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(_PAPER), encoding="utf-8")
    assert resolve_personas(str(path)) == resolve_personas(path) == load_personas(path)
    with pytest.raises(PromptLoadError, match=r"does not exist.*character, scripted"):
        resolve_personas("charcter")
