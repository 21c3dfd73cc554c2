"""Running the CLI in subprocesses for tests: a forked *CLI server* (imports done once) or
fresh interpreters, and the check of a one-line error. Test modules import the fixtures
``cli_env`` and ``cli`` from here (``from clitools import cli, cli_env``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# One thread: the tiny model gains nothing from more, and on a busy 2-core machine extra
# threads spin against other processes. No tokenizer threads (the server forks).
CLI_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore::DeprecationWarning"}
RUN = ["run", "--model", "tiny", "--preset", "smoke", "--quiet", "--no-figures"]
"""The run the signal tests interrupt (every stage of the study, ~5 s of compute)."""


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str


# ============================================================================ the CLI server
_SERVER = r'''
import json, os, sys, traceback
import persona_refusal.cli
import persona_refusal.experiments, persona_refusal.models, transformer_lens  # the slow imports, once
from transformers import AutoModelForCausalLM, AutoTokenizer

print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:  # one CLI invocation, as the console script runs it
        code = 1
        try:
            os.chdir(req["cwd"])
            for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            exec(req["setup"], {})
            sys.argv = ["persona-refusal", *req["argv"]]
            try:
                persona_refusal.cli.entry()
                code = 0
            except SystemExit as e:
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()  # what the interpreter prints for an uncaught exception
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
'''


class CliServer:
    """Runs ``persona-refusal ARGS`` in processes forked from one that imported everything."""

    def __init__(self, folder: Path, env: dict) -> None:
        self.folder = folder
        self.log = open(folder / "server.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, env=env)
        self.n = 0
        assert json.loads(self._read())["ready"]

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the CLI server died:\n" + (self.folder / "server.log").read_text())
        return line

    def __call__(self, argv: list[str], *, cwd: Path, setup: str = "") -> Result:
        self.n += 1
        out, err = self.folder / f"{self.n}.out", self.folder / f"{self.n}.err"
        req = {"argv": [str(a) for a in argv], "cwd": str(cwd), "stdout": str(out), "stderr": str(err),
               "setup": setup}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        rc = json.loads(self._read())["rc"]
        return Result(rc, out.read_text(), err.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        try:  # a loaded machine can take long to tear the interpreter down
            self.proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict:
    cache = tmp_path_factory.mktemp("cli_cache")
    return {**os.environ, **CLI_ENV, "PERSONA_REFUSAL_CACHE": str(cache)}


class ScratchCli:
    """:class:`CliServer`'s interface, each call a fresh interpreter: set
    ``PERSONA_REFUSAL_TEST_CLI=scratch`` to run every case that way (minutes)."""

    def __init__(self, env: dict) -> None:
        self.env = env

    def __call__(self, argv: list[str], *, cwd: Path, setup: str = "") -> Result:
        argv = [str(a) for a in argv]
        if setup:
            code = f"import sys\n{setup}\nfrom persona_refusal.cli import entry\nsys.argv[0] = 'persona-refusal'\nentry()\n"
            cmd = [sys.executable, "-c", code, *argv]
        else:
            cmd = [sys.executable, "-m", "persona_refusal.cli", *argv]
        res = subprocess.run(cmd, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=600)
        return Result(res.returncode, res.stdout, res.stderr)


@pytest.fixture(scope="module")
def cli(tmp_path_factory, cli_env):
    if os.environ.get("PERSONA_REFUSAL_TEST_CLI") == "scratch":
        yield ScratchCli(cli_env)
        return
    server = CliServer(tmp_path_factory.mktemp("cli_server"), cli_env)
    yield server
    server.close()


def assert_one_line_error(res: Result, out: Path | None = None) -> str:
    """Exit code 2, exactly one line on stderr starting with ``error:``, no traceback, and
    no results.json in the output folder. Returns the line."""
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert res.rc == 2, (res.rc, res.stderr)
    if out is not None:
        assert not (out / "results.json").exists()
    return lines[0]


def run_bad_case(cli, inputs: Path, tmp_path: Path, case: str, args: list, expected: str, *, setup: str = "",
                 run: list | None = None) -> Path:
    """Run one bad-input case in a copy of ``inputs``: ``run`` (default :data:`RUN`) with
    ``--out`` and ``args``, or ``args`` alone when they name a command. Checks a one-line
    error matching ``expected`` and that no output folder was created; returns the work folder."""
    work = tmp_path / "work"
    shutil.copytree(inputs, work)
    out = work / "out"
    argv = [*(run or RUN), "--out", out, *args] if str(args[0]).startswith("--") else args
    res = cli(argv, cwd=work, setup=setup)
    line = assert_one_line_error(res, out)
    assert re.fullmatch(expected, line), f"\n{line}\n{expected}"
    assert not out.exists(), f"{case}: the output folder was created before the error"
    return work


def bad_path(kind: str, where: Path, name: str, victim: Path) -> Path | None:
    """The path ``where/name`` made a bad output of ``kind``: a link to ``victim``, a dangling
    link (into ``where/nowhere``), a named pipe or a link to one, a folder, a file of the user's (``foreign
    file``, ``a file``) or a path below a file (``parent is a file``); ``None`` for any other
    kind (the caller makes its own)."""
    p = where / name
    if kind == "symlink":
        p.symlink_to(victim)
    elif kind == "dangling symlink":
        p.symlink_to(where / "nowhere" / "made")
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "symlink to a fifo":
        os.mkfifo(where / "pipe")
        p.symlink_to(where / "pipe")
    elif kind == "folder":
        p.mkdir()
    elif kind in ("foreign file", "a file"):
        p.write_text("notes of the user\n")
    elif kind == "parent is a file":
        (where / "afile").write_text("a file\n")
        p = where / "afile" / name
    else:
        return None
    return p
