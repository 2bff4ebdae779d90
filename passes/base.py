"""What a pass is: a plain function `(gm, ctx) -> PassResult`, registered by name.

A pass may rewrite the graph in place (it owns the GraphModule it is given) but must never write
into a weight tensor: it replaces attributes with new tensors instead, because the graph shares its
weights with the user's model. Each registered pass declares whether it is numerically exact (the
pipeline's debug mode then asserts the logits are unchanged) or approximate (debug mode reports the
SQNR against the previous graph and fails only on non-finite outputs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.fx as fx

from lowc.errors import PassError
from lowc.schemes import Scheme

EXACT = "exact"
APPROXIMATE = "approximate"


@dataclass
class PassResult:
    graph_module: fx.GraphModule
    modified: bool
    info: dict = field(default_factory=dict)  # free-form figures the pass wants in the dump


@dataclass
class PassContext:
    """What every pass may read. Nothing here is global; the compiler builds one per compile."""

    scheme: Scheme
    model_config: Any = None  # the HF config of the captured model
    calibration: Any = None  # lowc.calibrate.CalibrationData, when the scheme needs statistics
    recalibrate: Callable[[fx.GraphModule], Any] | None = None  # re-run statistics on a rewritten graph
    sample_inputs: tuple | None = None  # (input_ids, position_ids) for debug comparisons
    debug: bool = False
    progress: bool = True
    options: dict = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("lowc.passes"))


PassFn = Callable[[fx.GraphModule, PassContext], PassResult]


@dataclass(frozen=True)
class PassInfo:
    name: str
    fn: PassFn
    numerics: str = EXACT
    requires: tuple[str, ...] = ()  # passes that must have run earlier in the pipeline
    doc: str = ""

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        return self.fn(gm, ctx)

    def __repr__(self) -> str:
        return f"<pass {self.name} ({self.numerics}): {self.doc}>"


class PassRegistry:
    """Name -> PassInfo. One instance, `REGISTRY`, is the only mutable state the passes keep."""

    def __init__(self):
        self._passes: dict[str, PassInfo] = {}

    def add(self, info: PassInfo, *, replace: bool = False) -> PassInfo:
        if info.name in self._passes and not replace:
            raise PassError(f"a pass named {info.name!r} is already registered; pass replace=True to override it")
        self._passes[info.name] = info
        return info

    def get(self, name: str) -> PassInfo:
        try:
            return self._passes[name]
        except KeyError:
            raise PassError(f"no pass named {name!r}; registered passes: {', '.join(sorted(self._passes))}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._passes

    def names(self) -> list[str]:
        return sorted(self._passes)


REGISTRY = PassRegistry()


def register_pass(name: str, *, numerics: str = EXACT, requires: tuple[str, ...] = (), replace: bool = False):
    """Decorator: register `fn(gm, ctx) -> PassResult` under `name`."""
    if numerics not in (EXACT, APPROXIMATE):
        raise PassError(f"numerics must be {EXACT!r} or {APPROXIMATE!r}, got {numerics!r}")

    def wrap(fn: PassFn) -> PassFn:
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        REGISTRY.add(PassInfo(name, fn, numerics, tuple(requires), doc), replace=replace)
        return fn

    return wrap


def as_pass(p) -> PassInfo:
    """A PassInfo from a registered name, a PassInfo, or a bare callable (treated as approximate)."""
    if isinstance(p, PassInfo):
        return p
    if isinstance(p, str):
        return REGISTRY.get(p)
    if callable(p):
        name = getattr(p, "__name__", type(p).__name__)
        doc = (getattr(p, "__doc__", None) or "").strip().splitlines()
        return PassInfo(name, p, APPROXIMATE, (), doc[0] if doc else "user pass")
    raise PassError(f"a pass is a registered name or a callable (gm, ctx) -> PassResult, got {p!r}")
