"""The public API checks its arguments against its annotations (persona_refusal/checks.py).

Every callable exported at the top level, called through the package with one argument of
the wrong type, raises a one-line ``ConfigError`` naming the function and the parameter
before it does any work; correct calls behave as before. The wrong values are drawn from a
seeded pool, one case per checkable parameter of every exported callable.
"""

from __future__ import annotations

import inspect
import random
import time
from pathlib import Path

import pytest
import torch

import persona_refusal as pr
from persona_refusal import checks, extraction, interventions
from persona_refusal.errors import ConfigError

from conftest import make_direction, no_typecheck


def _plan(obj):
    """(owner, signature, {parameter: (kind, check)}, skip_first) of an exported callable."""
    if inspect.isclass(obj):
        if "__new__" not in obj.__dict__ or not getattr(obj.__new__, "_persona_refusal_checked", False):
            return None
        sig, found, _complete = checks._plan(obj.__init__, obj.__name__, obj.__module__, skip_first=True)
        return obj.__name__, sig, found, True
    if not callable(obj) or not hasattr(obj, "__wrapped__"):
        return None
    sig, found, _complete = checks._plan(obj, obj.__name__, inspect.unwrap(obj).__module__, skip_first=False)
    return obj.__name__, sig, found, False


def _exported():
    out = []
    for name in sorted(pr._EXPORTS):
        plan = _plan(getattr(pr, name))
        if plan is not None:
            out.append((name, plan))
    return out


@pytest.fixture(scope="module")
def pool(tiny):
    """Values of many kinds: each case picks fitting ones for the other parameters and a
    misfit for the one under test."""
    d = make_direction(model=tiny)
    means = torch.zeros(2, tiny.n_layers, tiny.d_model, dtype=torch.float64)
    grid = pr.DirectionGrid(positive_mean=means, negative_mean=means, positions=(-2, -1),
                            layers=tuple(range(tiny.n_layers)), name="g")
    return [tiny, d, pr.LayerDirections(vectors=torch.ones(tiny.n_layers, tiny.d_model), layers=tuple(range(tiny.n_layers)),
                                        name="l"),
            grid, pr.Ablate(d), [pr.Ablate(d)], {"base": []}, pr.SubstringJudge(), {"s": pr.SubstringJudge()},
            pr.bundled("harmful", "val"), ["Hi", "How are you?"], "text", Path("nowhere.txt"), 3, 2.5, True, None,
            [1, 2], [0.5], torch.ones(tiny.d_model), torch.ones(2, 3), torch.tensor(2), {"a": 1}, {1, 2},
            b"bytes", object(), len, (lambda text: False)]


def _cases(pool, seed: int = 0):
    """One (name, parameter label, call) per checkable parameter of every exported callable."""
    rng = random.Random(seed)
    cases, skipped = [], []
    for name, (owner, sig, found, skip_first) in _exported():
        params = list(sig.parameters.values())[1 if skip_first else 0:]
        for target in params:
            if target.name not in found:
                continue
            _, check = found[target.name]
            wrong = [v for v in rng.sample(pool, len(pool)) if check.fails(v, {}) is not None]
            if not wrong:
                skipped.append(f"{name}.{target.name}")
                continue
            args, kwargs, ok = [], {}, True
            for p in params:
                if p is target:
                    value = wrong[0]
                elif p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or (
                        target.kind is p.VAR_POSITIONAL and p.kind is p.KEYWORD_ONLY):
                    continue
                elif list(sig.parameters).index(p.name) > list(sig.parameters).index(target.name) or p.name not in found:
                    if p.default is not p.empty:
                        continue
                    value = None  # after the wrong one: never looked at
                else:
                    if p.default is not p.empty:
                        continue
                    fits = [v for v in pool if found[p.name][1].fails(v, {}) is None]
                    if not fits:
                        ok = False
                        break
                    value = fits[0]
                positional = p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL) or (
                    target.kind is p.VAR_POSITIONAL and p.kind is p.POSITIONAL_OR_KEYWORD)
                if positional:
                    args.append(value)
                else:
                    kwargs[p.name] = value
            label = f"{target.name}[0]" if target.kind is target.VAR_POSITIONAL else target.name
            if ok:
                cases.append((name, label, args, kwargs, wrong[0]))
            else:
                skipped.append(f"{name}.{target.name}")
    return cases, skipped


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_exported_callable_refuses_wrong_types(pool, seed):
    cases, skipped = _cases(pool, seed)
    names = {c[0] for c in cases}
    for must in ["extract_directions", "select_refusal_direction", "mean_activations", "persona_direction",
                 "refusal_scores", "first_token_outcome", "judged_conditions", "apply", "AddVector", "Ablate",
                 "AffineEdit", "Patch", "Direction", "load_results", "generate"]:
        assert must in names, f"{must} has no checked parameter"
    assert len(cases) > 150, (len(cases), skipped)
    with no_typecheck():
        for name, label, args, kwargs, wrong in cases:
            try:
                getattr(pr, name)(*args, **kwargs)
            except ConfigError as e:
                msg = str(e)
            else:
                pytest.fail(f"{name}({args}, {kwargs}) with {label}={wrong!r} raised nothing")
            assert "\n" not in msg
            if inspect.isclass(getattr(pr, name)) and not msg.startswith(f"{name}: "):
                continue  # the class's own check, which names the value in its own words
            assert msg.startswith(f"{name}: {label} must be "), (msg, name, label, wrong)
            assert ", got " in msg


def test_messages(tiny):
    d = make_direction(model=tiny)
    with no_typecheck():
        for call, message in [
            (lambda: pr.extract_directions(tiny, "How?", ["Hi"]),
             "extract_directions: positive must be a sequence of strings (a PromptSet or a list), got str 'How?'"),
            (lambda: pr.extract_directions({"model": 1}, ["a"], ["b"]),
             "extract_directions: chat_model must be a ChatModel, got dict"),
            (lambda: pr.mean_activations(tiny, ["a"], layers=2),
             "mean_activations: layers must be a sequence of integers or None, got int 2"),
            (lambda: pr.refusal_scores(tiny, ["a", 3]),
             "refusal_scores: instructions must be a sequence of strings (a PromptSet or a list) or a BatchPlan, "
             "got list whose item 1 is int 3"),
            (lambda: pr.apply(tiny, d),
             "apply: interventions[0] must be an Intervention, got Direction"),
            # a class's own check speaks where it has one; the annotation check where it has none
            (lambda: pr.AddVector(d, "strong"),
             "AddVector strength coeff must be a finite number, got 'strong' (use one number, e.g. 2.0)"),
            (lambda: pr.AddVector(d, 1.0, layer=True), "AddVector layer must be an integer, got True (use a whole number)"),
            (lambda: pr.Direction(vector=torch.ones(2, 64), layer=1),
             "a direction's vector must be a 1-D float tensor, got shape (2, 64)"),
            (lambda: pr.Ablate("refusal"), "Ablate: direction must be a Direction or a LayerDirections, got str 'refusal'"),
            (lambda: pr.Ablate(d, layers=[1.5]),
             "Ablate: layers must be a sequence of integers or None, got list whose item 0 is float 1.5"),
            (lambda: pr.SubstringJudge(5), "SubstringJudge: substrings must be a sequence of strings, got int 5"),
            (lambda: pr.load_results(3), "load_results: path must be a string or a path, got int 3"),
        ]:
            with pytest.raises(ConfigError) as info:
                call()
            assert str(info.value) == message


def test_correct_calls_still_work(tiny, prompts):
    grid = pr.extract_directions(tiny, prompts[:2], prompts[2:4], positions=[-1], layers=[1], progress=False)
    d = grid.direction(-1, 1)
    assert isinstance(pr.AddVector(d, 2.0), interventions.AddVector)
    with pr.apply(tiny, pr.Ablate(d, layers=(1, 2)), pr.AddVector(d, 1.0, layer=2)):
        scores = pr.refusal_scores(tiny, pr.bundled("harmful", "val")[:2], progress=False)
    assert scores.shape == (2,)
    means = pr.mean_activations(tiny, prompts[:2], positions=[-1], layers=[0], progress=False)
    assert means.shape == (1, 1, tiny.d_model)
    assert len(pr.generate(tiny, [prompts[2]], max_new_tokens=2, progress=False)) == 1


def test_wrappers_keep_name_doc_signature():
    fn = pr.extract_directions
    assert fn.__wrapped__ is extraction.extract_directions
    assert fn.__name__ == "extract_directions" and fn.__doc__ == extraction.extract_directions.__doc__
    assert inspect.signature(fn) == inspect.signature(extraction.extract_directions)
    assert pr.AddVector is interventions.AddVector  # classes keep their identity
    init = inspect.signature(inspect.unwrap(pr.AddVector.__init__))
    assert inspect.signature(pr.AddVector) == init.replace(parameters=list(init.parameters.values())[1:])


def test_calls_inside_the_package_are_not_checked():
    code = "result = AddVector('not a direction', 1.0)"
    space = {"__name__": "persona_refusal.somewhere", "AddVector": pr.AddVector}
    with no_typecheck():
        exec(code, space)  # noqa: S102 - a frame that counts as the package's own
    assert space["result"].direction == "not a direction"
    with no_typecheck(), pytest.raises(ConfigError):
        exec(code, {"__name__": "user_code", "AddVector": pr.AddVector})  # noqa: S102


def test_sampling_keeps_the_check_cheap():
    owner, sig, found, _ = _plan(pr.judge_responses)
    big = ["a"] * 1_000_000 + [3]
    start = time.perf_counter()
    for _ in range(100):
        checks.check_arguments(owner, sig, found, (big, big), {})
    assert time.perf_counter() - start < 0.5  # the first few items only


def test_bool_and_numbers():
    check = checks.compile_annotation
    assert check(int).fails(True, {}) and check(int).fails(2.0, {}) and not check(int).fails(torch.tensor(3), {})
    assert not check(float).fails(2, {}) and check(float).fails(False, {}) and not check(float).fails(torch.tensor(.5), {})
    assert check(bool).fails(1, {}) and not check(bool).fails(False, {})


def test_unresolvable_annotations_are_skipped():
    def f(a: "NoSuchName", b: "int") -> None:  # noqa: F821
        pass

    sig, found, _complete = checks._plan(f, "f", __name__, skip_first=False)
    assert list(found) == ["b"]
    assert checks.compile_annotation(object) is not None
    from typing import Any, Iterator
    assert checks.compile_annotation(Any) is None and checks.compile_annotation(Iterator[int]) is None


def test_every_exported_class_is_checked_where_it_is_defined():
    """Classes are marked in their own modules, so ``interventions.Patch(...)`` and
    ``pr.Patch(...)`` check the same, in any order of imports."""
    for name, module in pr._EXPORTS.items():
        obj = getattr(pr, name)
        if not inspect.isclass(obj) or issubclass(obj, BaseException) or getattr(obj, "_is_protocol", False):
            continue
        if name == "Intervention":  # the abstract base: its subclasses are checked
            continue
        assert getattr(obj.__dict__.get("__new__"), "_persona_refusal_checked", False) or \
            getattr(getattr(obj, "__new__", None), "_persona_refusal_checked", False), name
