"""The pass manager: build a scheme's ordered pipeline, run it, lint, compare, dump.

After every pass the graph is linted (FX's own lint plus lowc's invariants: every weight resolves,
every node is reachable from the output or is a placeholder); a failure names the pass. In debug
mode the pipeline runs the graph on `ctx.sample_inputs` before and after each pass: an exact pass
must leave the logits unchanged (relative max error <= 1e-4), an approximate one must keep them
finite, and its SQNR is recorded. With a dump directory every pass writes its graph before and
after, a diff and a summary; new nodes are stamped with the pass that made them.

Users change a pipeline with `before(name, p)`, `after(name, p)` and plain passes (appended at the
end, before dead-code elimination); see docs/writing-a-pass.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.fx as fx

from lowc.errors import PassError
from lowc.fileio import atomic_write_json, atomic_write_text
from lowc.ir import META_PASS, format_graph, graph_diff, summarize, summary_text
from lowc.schemes import Scheme
from lowc.passes.base import APPROXIMATE, EXACT, REGISTRY, PassContext, PassInfo, PassResult, as_pass

EXACT_RTOL = 1e-4


@dataclass(frozen=True)
class Insert:
    """Place pass `p` before or after the pass named `anchor`."""

    where: str  # "before" | "after"
    anchor: str
    p: object


def before(anchor: str, p) -> Insert:
    return Insert("before", anchor, p)


def after(anchor: str, p) -> Insert:
    return Insert("after", anchor, p)


@dataclass
class PassRecord:
    name: str
    numerics: str
    modified: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    info: dict = field(default_factory=dict)
    check: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        mod = "modified" if self.modified else "unchanged"
        return f"<{self.name}: {mod}, {self.nodes_before}->{self.nodes_after} nodes, {self.seconds:.2f}s>"


def build_pipeline(scheme: Scheme, extra=()) -> list[PassInfo]:
    """The scheme's passes, in order, with the user's passes placed where asked."""
    steps = [REGISTRY.get(name) for name in scheme.passes]
    for item in extra or ():
        if isinstance(item, Insert):
            names = [s.name for s in steps]
            if item.anchor not in names:
                raise PassError(
                    f"cannot insert {item.where} {item.anchor!r}: scheme {scheme.name} runs {names}"
                )
            i = names.index(item.anchor) + (1 if item.where == "after" else 0)
            steps.insert(i, as_pass(item.p))
        else:
            tail = len(steps) - 1 if steps and steps[-1].name == "eliminate_dead_code" else len(steps)
            steps.insert(tail, as_pass(item))
    _check_requires(steps)
    return steps


def _check_requires(steps: list[PassInfo]) -> None:
    seen: set[str] = set()
    for s in steps:
        missing = [r for r in s.requires if r not in seen]
        if missing:
            raise PassError(f"pass {s.name!r} requires {missing} to run before it; pipeline is {[x.name for x in steps]}")
        seen.add(s.name)


def lint(gm: fx.GraphModule, pass_name: str) -> None:
    """FX lint plus lowc's invariants; raises PassError naming the pass that broke them."""
    try:
        gm.graph.lint()
    except Exception as e:
        raise PassError(f"pass {pass_name!r} left an invalid graph: {e}") from e
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            obj = gm
            for part in str(n.target).split("."):
                if not hasattr(obj, part):
                    raise PassError(f"pass {pass_name!r}: node %{n.name} reads weight {n.target!r}, which does not exist")
                obj = getattr(obj, part)
        if n.op not in ("placeholder", "output") and not n.users and not _has_side_effect(n):
            raise PassError(
                f"pass {pass_name!r} left node %{n.name} ({n.target}) unused; erase it or run eliminate_dead_code"
            )


def _has_side_effect(n: fx.Node) -> bool:
    t = n.target
    if isinstance(t, torch._ops.OpOverload):
        return t._schema.is_mutable or "assert" in t.name() or "sym_constrain" in t.name()
    return n.op == "call_module" or bool(getattr(t, "_nondeterministic_seeded", False))


def _compare(ref: torch.Tensor, out: torch.Tensor) -> dict:
    ref, out = ref.double(), out.double()
    err = (out - ref).abs().max().item()
    scale = ref.abs().max().item() or 1.0
    noise = (out - ref).norm().item()
    sqnr = math.inf if noise == 0 else 20 * math.log10(ref.norm().item() / noise)
    return {"max_abs": err, "max_rel": err / scale, "sqnr_db": sqnr, "finite": bool(torch.isfinite(out).all())}


def run_pipeline(
    gm: fx.GraphModule,
    ctx: PassContext,
    steps: list[PassInfo],
    dump_dir: str | Path | None = None,
    on_step=None,
    finalize=None,
) -> tuple[fx.GraphModule, list[PassRecord]]:
    """Run `steps` in order; returns the final graph and one record per pass.

    `on_step(name)` is called after each pass (the compiler drives its progress bar with it);
    `finalize(gm)` runs after the last pass, before the final dump (the compiler links kernel files).
    """
    dump = Path(dump_dir) if dump_dir else None
    if dump:
        atomic_write_text(dump / "scheme.json", ctx.scheme.to_json() + "\n")
        atomic_write_text(dump / "00_capture.txt", format_graph(gm))
    records: list[PassRecord] = []
    ref = _run(gm, ctx) if ctx.debug else None
    for i, step in enumerate(steps, start=1):
        before_txt = format_graph(gm) if dump else None
        existing = set(map(id, gm.graph.nodes))
        n_before = len(gm.graph.nodes)
        t0 = time.perf_counter()
        try:
            with torch.no_grad():  # rewritten weights and buffers must not hold autograd history (nor the
                result = step(gm, ctx)  # user's parameters alive through it)
        except PassError:
            raise
        except Exception as e:
            raise PassError(f"pass {step.name!r} failed: {type(e).__name__}: {e}") from e
        if not isinstance(result, PassResult):
            raise PassError(f"pass {step.name!r} returned {type(result).__name__}; a pass returns PassResult(gm, modified)")
        gm = result.graph_module
        for n in gm.graph.nodes:
            if id(n) not in existing:
                n.meta.setdefault(META_PASS, step.name)
        gm.recompile()
        lint(gm, step.name)
        rec = PassRecord(step.name, step.numerics, result.modified, time.perf_counter() - t0, n_before,
                         len(gm.graph.nodes), dict(result.info))
        if ctx.debug:
            out = _run(gm, ctx)
            rec.check = _compare(ref, out)
            _enforce(step, rec.check)
            ref = out
        records.append(rec)
        ctx.log.info("%s", rec)
        if on_step is not None:
            on_step(step.name)
        if dump:
            after_txt = format_graph(gm)
            folder = dump / f"{i:02d}_{step.name}"
            atomic_write_text(folder / "before.txt", before_txt)
            atomic_write_text(folder / "after.txt", after_txt)
            atomic_write_text(folder / "diff.txt", graph_diff(before_txt, after_txt, step.name))
            atomic_write_json(folder / "summary.json", {**summarize(gm), "pass": rec.__dict__})
    if finalize is not None:
        finalize(gm)
    if dump:
        s = summarize(gm)
        atomic_write_json(dump / "summary.json", s)
        atomic_write_text(dump / "summary.txt", summary_text(s) + "\n" + "\n".join(map(repr, records)) + "\n")
        atomic_write_text(dump / "final.txt", format_graph(gm))
        atomic_write_text(dump / "final_code.py", gm.code)
    return gm, records


def _run(gm: fx.GraphModule, ctx: PassContext) -> torch.Tensor:
    if ctx.sample_inputs is None:
        raise PassError("debug mode compares graphs on sample inputs; set PassContext.sample_inputs")
    with torch.no_grad():
        return gm(*ctx.sample_inputs).float()


def _enforce(step: PassInfo, check: dict) -> None:
    if not check["finite"]:
        raise PassError(f"pass {step.name!r} made the logits non-finite (NaN/Inf) on the sample input")
    if step.numerics == EXACT and check["max_rel"] > EXACT_RTOL:
        raise PassError(
            f"pass {step.name!r} is declared exact but changed the logits by {check['max_rel']:.2e} "
            f"(relative max, allowed {EXACT_RTOL:g}); fix the rewrite or register it with numerics='{APPROXIMATE}'"
        )
