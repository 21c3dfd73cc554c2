"""Stage ``sensitivity``: the re-add cells under other persona and re-add strengths, judged,
each restoration beside its degenerate share.

The gating claims are read at one persona strength α (calibrated on val) and a few re-add
strengths β. The paper's own α differs between its scripts (2.5 and 3, in units of another
norm), so this stage asks whether the verdicts hold nearby: for every multiplier ``m`` of
``sensitivity_alpha_multipliers`` the persona is steered at ``m·α`` and every cell is
re-added at ``β = r·m·α`` for every ratio ``r`` of ``sensitivity_beta_ratios`` (the paper's
2/3 and 0.8 among them). The cell named ``early_cell`` also gets the smaller ratios of
``early_beta_ratios`` at α: a large early re-add can wreck the replies (degenerate text is
not refusal), so "early does not restore" is read only where the early re-add leaves the
model able to answer.

Damage is not gating: every row carries the headline judge's degenerate share next to its
refusal rate and restoration, and ``coherent`` says whether that share is at most
``calibration_max_degenerate``. Restoration is of the gap between the baseline and the
persona at that row's strength (its own persona-only condition). Conditions that the
``eval`` and ``gating_judged`` stages already generated (the persona at α, the cells at
their βs) are read from their checkpoints, not generated again.
"""

from __future__ import annotations

from dataclasses import dataclass

from persona_refusal.study.gating.context import StudyContext
from persona_refusal.study.registry import StageResult, register
from persona_refusal.study.gating.stages.gating_judged import judged_stats

__all__ = ["SensitivityResult", "sensitivity_conditions"]

GROUP_ROWS = 256


@dataclass
class SensitivityResult(StageResult):
    sensitivity: dict | None
    """``rows`` (cell × persona strength × β/α: refusal and degenerate rates, restoration,
    ``coherent``) and ``persona`` (each strength's persona-only rates). ``None`` when
    ``sensitivity_alpha_multipliers`` is empty."""


def _r(x: float) -> float:
    return round(float(x), 6)


def sensitivity_conditions(ctx: StudyContext) -> tuple[dict[str, list], list[dict]]:
    """The stage's conditions by key, and one descriptor per table row (``cell``, ``m``,
    ``alpha``, ``ratio``, ``beta``, ``key``, ``persona_key``)."""
    cfg, cells, a0 = ctx.cfg, ctx.layers["readd_cells"], ctx.alpha
    conds: dict[str, list] = {}
    rows: list[dict] = []
    for m in cfg.sensitivity_alpha_multipliers:
        a = _r(m * a0)
        pkey = f"persona:a{a}"
        conds[pkey] = [ctx.steer(a)]
        ratios = list(cfg.sensitivity_beta_ratios)
        for name, layers in cells.items():
            extra = cfg.early_beta_ratios if (name == cfg.early_cell and m == 1) else []
            for r in sorted(set(ratios) | set(extra)):
                b = _r(r * a)
                key = f"cell:{name}:a{a}:b{b}"
                conds[key] = [ctx.steer(a), *[ctx.readd(b, l) for l in layers]]
                rows.append({"cell": name, "layers": layers, "m": float(m), "alpha": a, "ratio": float(r), "beta": b,
                             "key": key, "persona_key": pkey, "small_beta": r in extra and r not in ratios})
    return conds, rows


def _reused(ctx: StudyContext, key: str) -> tuple[str, str] | None:
    """Where an earlier stage stored the same condition: ``(stage, key)``, else ``None``."""
    a0, kind = ctx.alpha, key.split(":")[0]
    if kind == "persona" and _r(float(key.split(":a")[1])) == _r(a0):
        return "eval", "persona"
    if kind == "cell":
        _, name, a, b = key.split(":")
        if _r(float(a[1:])) != _r(a0):
            return None
        beta = next((x for x in ctx.betas if _r(x) == _r(float(b[1:]))), None)
        return None if beta is None else ("gating_judged", f"cell:{name}:{beta}")
    return None


@register("sensitivity", requires=("gating_judged",), order=77)
def run(ctx: StudyContext) -> SensitivityResult:
    """The cells under other persona and re-add strengths, each beside its degenerate share."""
    cfg = ctx.cfg
    if not cfg.sensitivity_alpha_multipliers:
        return SensitivityResult(None)
    ev, judges = ctx.eval_harmful, list(ctx.judges)
    conds, rows = sensitivity_conditions(ctx)
    stored, todo = {}, {}
    for key, ivs in conds.items():
        where = _reused(ctx, key)
        if where is not None and ctx.store.has(*where):
            stored[key] = ctx.store.get(*where)
        else:
            todo[key] = ivs
    with ctx.timer("sensitivity"):
        base = ctx.store.get("eval", "baseline")
        gens = {**stored, **ctx.judged("sensitivity", ev, todo, "sensitivity", group_rows=GROUP_ROWS)}
    kw = ctx.boot
    head, max_deg = cfg.judge, cfg.calibration_max_degenerate
    out_rows = []
    for r in rows:
        st = judged_stats(gens[r["key"]], base, gens[r["persona_key"]], judges, **kw)
        out_rows.append({k: v for k, v in r.items() if k not in ("key", "persona_key")} | st
                        | {"coherent": st[head]["degenerate"]["rate"] <= max_deg})
    persona = []
    for m in cfg.sensitivity_alpha_multipliers:
        a = _r(m * ctx.alpha)
        st = judged_stats(gens[f"persona:a{a}"], None, None, judges, **kw)
        persona.append({"m": float(m), "alpha": a, **st})
    return SensitivityResult({
        "alpha": ctx.alpha, "n": len(ev), "judge": head, "max_degenerate": max_deg,
        "alpha_multipliers": list(cfg.sensitivity_alpha_multipliers), "beta_ratios": list(cfg.sensitivity_beta_ratios),
        "early_cell": cfg.early_cell, "early_beta_ratios": list(cfg.early_beta_ratios),
        "baseline": judged_stats(base, None, None, judges, **kw), "persona": persona, "rows": out_rows,
    })
