"""A seeded, time-bounded fuzz of ``persona-refusal run`` on the tiny model.

Random bytes and random JSON shapes as prompt and config files, random values for random
flags. Whatever comes in, the command ends with exit code 0 (it ran) or 2 (a one-line
error), never a traceback, and never writes a file outside its ``--out`` folder.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import pytest

from clitools import RUN, assert_one_line_error, cli, cli_env  # noqa: F401  (fixtures)
from persona_refusal.study import StudyConfig

SEED = 20261202
CASES = int(os.environ.get("PERSONA_REFUSAL_FUZZ_CASES", "36"))
"""How many cases to try (each a few seconds at most; the budget below also bounds it)."""
BUDGET_S = float(os.environ.get("PERSONA_REFUSAL_FUZZ_SECONDS", "150"))
"""Wall-clock budget: no new case starts after it (the test reports how many ran)."""

PROMPT_FLAGS = ["--train-harmful", "--train-harmless", "--val-harmful", "--val-harmless", "--eval-harmful",
                "--eval-harmless"]


def _junk_text(rng: random.Random, n: int) -> str:
    alphabet = "ab ,.\n\t\"'{}[]:\\\u2028\u2029\x0c\x00é中🙂"
    return "".join(rng.choice(alphabet) for _ in range(n))


def _json_shape(rng: random.Random, depth: int = 0):
    kind = rng.choice(["int", "float", "str", "bool", "null", "list", "dict"] if depth < 4 else ["int", "str"])
    if kind == "int":
        return rng.choice([0, -1, 1, 3, 2**64, -(2**63)])
    if kind == "float":
        return rng.choice([0.5, -2.5, 1e30, 1e-300])
    if kind == "str":
        return rng.choice(["", "all", "every:0", "every:-1", "from:x", "x", "3", "1e3", _junk_text(rng, 6)])
    if kind == "bool":
        return rng.choice([True, False])
    if kind == "null":
        return None
    if kind == "list":
        return [_json_shape(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["instruction", "prompt", "n_train", "x", ""]): _json_shape(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}


def _prompt_file(rng: random.Random, folder: Path, i: int) -> Path:
    kind = rng.choice(["bytes", "json", "jsonl", "txt", "csv"])
    path = folder / f"p{i}.{ 'txt' if kind == 'bytes' else kind}"
    if kind == "bytes":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))
    elif kind == "json":
        shape = rng.choice([_json_shape(rng), ["a prompt", "another"], [{"instruction": "x"}, 3]])
        path.write_text(json.dumps(shape))
    elif kind == "jsonl":
        path.write_text("\n".join(json.dumps(_json_shape(rng)) for _ in range(rng.randint(0, 4))))
    elif kind == "txt":
        path.write_text(_junk_text(rng, rng.randint(0, 40)), encoding="utf-8", errors="surrogatepass")
    else:
        path.write_text(rng.choice(["instruction\nhi\n", "a,b\n1,2\n", "prompt\n\"unterminated\n", ""]))
    return path


def _flag_value(rng: random.Random, kind: str) -> str:
    pools = {
        "int": ["0", "-3", "1", "2", "4", "99999999999999999999999", "abc", "2.5"],
        "float": ["0", "-1", "2", "nan", "inf", "-inf", "1e30", "x"],
        "strengths": ["1,2", "nan", "", "1e9", "2,x", "-3"],
        "ints": ["0,1", "-1", "99", "a", ""],
        "layers": ["all", "every:0", "every:-1", "every:2", "from:99", "below:nan", "0,99", "x", ""],
        "choice": ["judge", "none", "relative", "mean", "bogus"],
        "path": ["", "missing.txt", ".", "/dev/null"],
        "str": ["tiny", "", "no-such-model"],
        "device": ["cpu", "auto", "cuda:7", "gpu", ""],
    }
    return rng.choice(pools.get(kind, ["x"]))


def _case(rng: random.Random, folder: Path) -> list[str]:
    args: list[str] = []
    for i in range(rng.randint(0, 2)):
        args += [rng.choice(PROMPT_FLAGS), str(_prompt_file(rng, folder, i))]
    fields = [n for n in StudyConfig.field_names() if n != "model"]
    for name in rng.sample(fields, rng.randint(0, 3)):
        check = StudyConfig.check_of(name)
        if not check.flag:
            continue
        flag = "--" + name.replace("_", "-")
        args += [flag] if check.kind == "bool" else [flag, _flag_value(rng, check.kind)]
    if rng.random() < 0.5:
        cfg = {rng.choice(fields + ["prompts", "steering", "n_trian"]): _json_shape(rng) for _ in range(rng.randint(0, 3))}
        if rng.random() < 0.2:
            cfg = _json_shape(rng)
        (folder / "config.json").write_text(json.dumps(cfg))
        args += ["--config", str(folder / "config.json")]
    if rng.random() < 0.15:
        (folder / "bad.json").write_bytes(bytes(rng.randrange(256) for _ in range(32)))
        args += ["--config", str(folder / "bad.json")]
    return args


def _files(folder: Path, skip: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and skip not in p.parents}


def test_random_input_never_gives_a_traceback_or_writes_outside_out(cli, tmp_path):
    rng = random.Random(SEED)
    deadline = time.monotonic() + BUDGET_S
    ran, outcomes = 0, {0: 0, 2: 0}
    for k in range(CASES):
        if time.monotonic() > deadline:
            break
        work = tmp_path / f"case{k}"
        work.mkdir()
        out = work / "out"
        args = _case(rng, work)
        # most cases stop after the first stage: bad input shows before any compute, and a
        # valid case then costs a second, not a whole smoke study
        stages = [] if rng.random() < 0.2 else ["--stages", "refusal"]
        before = _files(work, out)
        res = cli([*RUN, "--out", str(out), *stages, *args], cwd=work)
        ran += 1
        assert res.rc in (0, 2), (args, res.rc, res.stderr[-2000:])
        assert "Traceback" not in res.stderr + res.stdout, (args, res.stderr[-3000:])
        if res.rc == 2:
            assert_one_line_error(res)
        assert _files(work, out) == before, f"files outside --out changed for {args}"
        outcomes[res.rc] += 1
    assert ran >= min(CASES, 8), f"only {ran} cases fit in the budget"
    assert outcomes[2] > 0  # the fuzz does reach the error paths
    print(f"fuzz: {ran} cases, {outcomes[0]} ran, {outcomes[2]} one-line errors")


@pytest.mark.parametrize("value", ["nan", "inf", "1e30"])
def test_non_finite_or_huge_strengths_on_the_command_line(cli, tmp_path, value):
    out = tmp_path / "out"
    res = cli([*RUN, "--out", str(out), "--persona-alpha", value], cwd=tmp_path)
    line = assert_one_line_error(res, out)
    assert "persona_alpha" in line and (math.isfinite(float(value)) or "finite" in line)
