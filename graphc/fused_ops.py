"""Fused elementwise groups: one node per output of a group of elementwise ops.

The fusion pass (:mod:`graphc.passes.fusion`) replaces a connected group of elementwise
nodes of one shape and float dtype (and sums of them, as reduction epilogues) by
:class:`Fused` nodes.  A group is data: :class:`FusedGroup` lists its *steps*, each an
:class:`~graphc.elementwise_ops.ElementwiseDef` applied to group inputs, earlier steps or
numbers, and its *outputs*, each a step, optionally summed over leading axes or all axes.
Every output of a group is its own node ``Fused(group, k)`` with the group's inputs, so the
IR keeps one value per node: a group used for three outputs is three nodes with equal
inputs, which the Numba backend computes in one loop nest.

A group *is* an elementwise op whose expression is the composition of its steps:

- ``group.expressions()``: the outputs as SymPy expressions of the input symbols, composed
  from the steps' *stable* forms (what is evaluated; softplus stays ``max(x, 0) +
  log1p(exp(-|x|))``) or, with ``stable=False``, from their mathematical forms (diagrams);
- the NumPy reference evaluates the steps one by one with each op's own NumPy form, so a
  fused node gives bit for bit what its unfused nodes give;
- its derivative is derived from its expression DAG: :meth:`FusedGroup.derivative` applies
  the chain rule over the steps with each step's SymPy-derived local derivative (the same
  ``local_def`` nodes autodiff builds), giving another group.  So ``gc.grad`` of a fused
  graph is the gradient of the unfused one, and fusing before autodiff works.

>>> import numpy as np, graphc as gc
>>> from graphc.passes.fusion import fusion
>>> x = gc.input("x", (4,), "float64")
>>> g = fusion(gc.Graph(gc.tanh(gc.sigmoid(x))))
>>> [t.op.name for t in g.nodes]
['input', 'fused']
>>> str(g.outputs[0].op.group.expressions(stable=False)[0])
'tanh(1/(1 + exp(-x0)))'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import sympy as sp

from . import dtypes
from . import elementwise_ops as ew
from .errors import DTypeError
from .inputs import constant
from .ir import Op, Tensor
from .shape_ops import broadcast_to, reshape_to, unbroadcast
from .upstream_product import product_op

# A step argument: ("in", j) the group's j-th input, ("step", s) an earlier step's value,
# ("const", value) a number in the group's dtype.
Ref = tuple


@dataclass(frozen=True)
class FusedStep:
    """One elementwise op of a group: ``fn(*args)`` with static ``params``."""

    fn: ew.ElementwiseDef
    params: tuple
    args: tuple  # of Ref

    def text(self) -> str:
        args = ", ".join(_ref_text(r) for r in self.args)
        params = "".join(f", {k}={v!r}" for k, v in self.params)
        return f"{self.fn.name}({args}{params})"


@dataclass(frozen=True)
class FusedOutput:
    """An output of a group: step ``step``, summed over ``reduce`` axes if given."""

    step: int
    reduce: tuple | None = None  # axes of the group's domain, sorted
    keepdims: bool = False

    def text(self) -> str:
        if self.reduce is None:
            return f"s{self.step}"
        return f"sum(s{self.step}, axes={self.reduce}{', keepdims' if self.keepdims else ''})"


def _ref_text(r: Ref) -> str:
    return f"x{r[1]}" if r[0] == "in" else f"s{r[1]}" if r[0] == "step" else repr(r[1])


@dataclass(frozen=True, eq=False)
class FusedGroup:
    """A fused group: steps over the inputs and the outputs they give.

    Every step works in and returns ``dtype`` (a float dtype); inputs of other dtypes are
    converted on load, as an unfused op converts its operands (bool inputs stay bool where
    a step takes a bool argument, the condition of ``where``).
    """

    steps: tuple  # of FusedStep
    outputs: tuple  # of FusedOutput
    dtype: str
    input_dtypes: tuple
    tag: str = ""  # "recomputed": a copy made by rematerialization, never merged with its original
    _key: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        key = (self.steps, self.outputs, self.dtype, self.input_dtypes, self.tag)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_hash", hash(key))

    def __eq__(self, other):
        return self is other or (isinstance(other, FusedGroup) and self._key == other._key)

    def __hash__(self):
        return self._hash

    @property
    def arity(self) -> int:
        return len(self.input_dtypes)

    # -- text -------------------------------------------------------------------------------
    @cached_property
    def text(self) -> str:
        """The steps, one per line, then the outputs (deterministic: used in digests)."""
        lines = [f"s{k} = {s.text()}" for k, s in enumerate(self.steps)]
        outs = ", ".join(o.text() for o in self.outputs)
        tag = f" ({self.tag})" if self.tag else ""
        return "; ".join(lines) + f" -> {outs} [{self.dtype}]{tag}"

    @cached_property
    def summary(self) -> str:
        """Short label: the member ops in order (``tanh·sigmoid·mul``)."""
        names = [s.fn.name for s in self.steps]
        text = "·".join(names[:6]) + (f"·…({len(names)} ops)" if len(names) > 6 else "")
        return text

    # -- evaluation (the NumPy reference) ----------------------------------------------------
    def evaluate_step(self, step: int, arrays) -> np.ndarray:
        """The value of ``step`` for input ``arrays``, evaluating the needed steps one by
        one with each op's NumPy form (exactly what the unfused nodes compute)."""
        values: dict[int, np.ndarray] = {}
        work = np.dtype(self.dtype)
        for s in sorted(self.needed((step,))):
            st = self.steps[s]
            fn = st.fn
            args = []
            for a, ref in zip(fn.args, st.args):
                if ref[0] == "in":
                    v = arrays[ref[1]]
                    if a.name not in fn.bool_args:
                        v = v.astype(work, copy=False)
                elif ref[0] == "step":
                    v = values[ref[1]]
                else:
                    v = np.asarray(ref[1], dtype=work)
                args.append(v)
            with np.errstate(all="ignore"):
                result = fn.numpy_function(st.params)(*args)
            values[s] = np.asarray(result, dtype=work)
        return values[step]

    def needed(self, steps) -> set[int]:
        """The steps that ``steps`` depend on (themselves included)."""
        need, stack = set(), list(steps)
        while stack:
            s = stack.pop()
            if s in need:
                continue
            need.add(s)
            stack.extend(r[1] for r in self.steps[s].args if r[0] == "step")
        return need

    # -- SymPy forms ------------------------------------------------------------------------
    def symbols(self) -> tuple[sp.Symbol, ...]:
        return tuple(sp.Symbol(f"x{j}", real=True) for j in range(self.arity))

    def step_expression(self, step: int, args, stable: bool = True) -> sp.Expr:
        """Step ``step``'s SymPy form with its arguments replaced by ``args``."""
        st = self.steps[step]
        fn = st.fn
        template = fn.stable if stable else fn.expr
        subs = dict(zip(fn.param_symbols, (v for _, v in st.params)))
        subs.update(zip(fn.args, args))
        return template.xreplace(subs)

    def expressions(self, stable: bool = True, symbols=None) -> list[sp.Expr]:
        """Each output (before its reduction) as one SymPy expression of the inputs."""
        symbols = self.symbols() if symbols is None else symbols
        values: dict[int, sp.Expr] = {}
        for s in sorted(self.needed(o.step for o in self.outputs)):
            args = [symbols[r[1]] if r[0] == "in" else values[r[1]] if r[0] == "step"
                    else sp.Float(r[1]) for r in self.steps[s].args]
            values[s] = self.step_expression(s, args, stable)
        return [values[o.step] for o in self.outputs]

    def statements(self, outputs=None, symbols=None):
        """The outputs (before their reductions) as SymPy code: ``(bound, exprs)``.

        Every step is its own statement: ``bound`` lists ``(s<k>, expression of step k)``
        in step order, each expression being one op's form over the input symbols and
        earlier ``s<k>``; ``exprs`` are the output symbols.  Composing steps into one
        expression would let SymPy canonicalise across ops (``(a - b) + c`` becomes
        ``a + c - b``, which rounds differently), so a fused kernel computes exactly the
        graph's operations in the graph's order, and the code stays linear in the group
        size.  A step whose arguments repeat a value is built unevaluated, so that
        ``sub(s, s)`` stays ``s - s`` (NaN for an infinite ``s``), not 0."""
        symbols = self.symbols() if symbols is None else symbols
        outputs = self.outputs if outputs is None else outputs
        values: dict[int, sp.Expr] = {}
        bound = []
        for s in sorted(self.needed(o.step for o in outputs)):
            refs = self.steps[s].args
            args = [symbols[r[1]] if r[0] == "in" else values[r[1]] if r[0] == "step"
                    else sp.Float(r[1]) for r in refs]
            with sp.evaluate(len(set(refs)) == len(refs)):
                expr = self.step_expression(s, args)
            values[s] = sp.Symbol(f"s{s}", real=True)
            bound.append((values[s], expr))
        return bound, [values[o.step] for o in outputs]

    # -- derivatives ------------------------------------------------------------------------
    def derivative(self, step: int, j: int, seeded: bool = False) -> FusedGroup | None:
        """d(step) / d(input j) as a one-output group over the same inputs, or None if it
        is zero.  Reverse-mode chain rule over the steps, each step's local derivative
        being its op's SymPy-derived ``local_def`` (as autodiff builds for unfused ops).
        ``seeded``: the group takes one more input, the upstream gradient g, and
        gives g · d(step)/d(input j) with g entering the chain at ``step``: each local
        meets it as in autodiff (g / x for log' = 1/x, finite at a subnormal x)."""
        depends = self._depends_on(j)
        if step not in depends:
            return None
        b = _Builder(list(self.steps))
        adjoint: dict[int, Ref] = {step: ("in", self.arity) if seeded else ("const", 1.0)}
        total = None
        for s in sorted(self.needed((step,)), reverse=True):
            upstream = adjoint.pop(s, None)
            if upstream is None:
                continue
            st = self.steps[s]
            for k, ref in enumerate(st.args):
                if ref[0] == "const" or (ref[0] == "in" and ref[1] != j) or \
                        (ref[0] == "step" and ref[1] not in depends):
                    continue
                local = b.local(s, k)
                if local is None:
                    continue
                part = b.product(upstream, local)
                if ref[0] == "in":
                    total = part if total is None else b.add(total, part)
                else:
                    old = adjoint.get(ref[1])
                    adjoint[ref[1]] = part if old is None else b.add(old, part)
        if total is None:
            return None
        return b.group(total, self.dtype, self.input_dtypes + (self.dtype,) * seeded)

    def _depends_on(self, j: int) -> set[int]:
        out = set()
        for s, st in enumerate(self.steps):
            if any((r[0] == "in" and r[1] == j) or (r[0] == "step" and r[1] in out)
                   for r in st.args):
                out.add(s)
        return out


class _Builder:
    """Appends steps for a derivative group, mirroring autodiff's rules for local
    derivatives (passes/autodiff.py ``_local``)."""

    def __init__(self, steps):
        self.steps = steps
        self.index: dict[FusedStep, int] = {st: k for k, st in enumerate(steps)}

    def step(self, fn, params, args) -> Ref:
        st = FusedStep(fn, params, tuple(args))
        k = self.index.get(st)
        if k is None:  # hash-consing inside the group, as in the graph
            k = self.index[st] = len(self.steps)
            self.steps.append(st)
        return ("step", k)

    def local(self, s: int, k: int) -> Ref | None:
        st = self.steps[s]
        fn = st.fn
        expr = fn.derivatives[k]
        if expr == 0:
            return None
        operands = dict(zip(fn.args, st.args)) | {fn.out: ("step", s)}
        if expr.is_Symbol:
            ref = operands[expr]
            return ref if ref[0] != "in" else self.step(_COPY, (), [ref])
        if expr.is_number:
            return ("const", float(expr))
        local = fn.local_def(k, st.params)
        return self.step(local, st.params, [operands[a] for a in local.args])

    def mul(self, a: Ref, b: Ref) -> Ref:
        if a == ("const", 1.0):
            return b
        if b == ("const", 1.0):
            return a
        return self.step(ew.mul, (), [a, b])

    def product(self, g: Ref, local: Ref) -> Ref:
        """``g * local``, as autodiff's (:func:`graphc.upstream_product.product_op`): 0 on a
        0 branch of a piecewise local (clip's at |x| > 1) whatever ``g`` holds, inf
        included, and ``(g n) / d`` for a quotient n/d (log' = 1/x)."""
        st = self.steps[local[1]] if local[0] == "step" else None
        rule = product_op(st.fn) if st is not None else None
        if rule is None:
            return self.mul(g, local)
        op, reads_local = rule
        return self.step(op, st.params, [local] * reads_local + [*st.args, g])

    def add(self, a: Ref, b: Ref) -> Ref:
        return self.step(ew.add, (), [a, b])

    def group(self, result: Ref, dtype, input_dtypes) -> FusedGroup:
        if result[0] != "step":  # a constant derivative: still a step of the group
            result = self.step(_COPY, (), [result])
        return prune(self.steps, [FusedOutput(result[1])], dtype, input_dtypes)


# The identity, for converting an input to the group's dtype where a derivative is the
# input itself (d(x*y)/dx = y).  Not registered: it is internal to fused groups.
_COPY = ew.ElementwiseDef("copy", (sp.Symbol("x", real=True),), {}, sp.Symbol("x", real=True))


def prune(steps, outputs, dtype, input_dtypes, tag: str = "") -> FusedGroup:
    """A group of the steps ``outputs`` need, renumbered in order."""
    need: set[int] = set()
    stack = [o.step for o in outputs]
    while stack:
        s = stack.pop()
        if s not in need:
            need.add(s)
            stack.extend(r[1] for r in steps[s].args if r[0] == "step")
    order = sorted(need)
    new = {s: k for k, s in enumerate(order)}

    def ref(r):
        return ("step", new[r[1]]) if r[0] == "step" else r
    kept = tuple(FusedStep(steps[s].fn, steps[s].params, tuple(ref(r) for r in steps[s].args))
                 for s in order)
    outs = tuple(FusedOutput(new[o.step], o.reduce, o.keepdims) for o in outputs)
    return FusedGroup(kept, outs, dtype, tuple(input_dtypes), tag)


def reduced_shape(shape, axes, keepdims) -> tuple[int, ...]:
    return tuple(1 if i in axes else d for i, d in enumerate(shape)
                 if keepdims or i not in axes)


@dataclass(frozen=True)
class Fused(Op):
    """Output ``output`` of a fused ``group``, applied to the group's inputs."""

    group: FusedGroup
    output: int = 0

    name = "fused"

    @property
    def out(self) -> FusedOutput:
        return self.group.outputs[self.output]

    def attrs(self):
        out = self.out
        attrs = {"ops": self.group.summary, "steps": len(self.group.steps)}
        if out.reduce is not None:
            attrs["sum_axes"] = out.reduce
        return attrs

    def key(self) -> str:
        return f"fused({self.group.text}; output={self.output})"

    def work_dtype(self, operand_dtypes=()) -> str:
        """The dtype every step of the group computes in (operands are converted to it)."""
        return self.group.dtype

    def infer(self, inputs):
        g = self.group
        if len(inputs) != g.arity:
            self.fail(f"takes {g.arity} inputs, got {len(inputs)}", inputs)
        for t, want in zip(inputs, g.input_dtypes):
            if t.dtype != want:
                self.fail(f"input dtypes {tuple(t.dtype for t in inputs)} differ from the "
                          f"group's {g.input_dtypes}", inputs, DTypeError)
        if not dtypes.is_float(g.dtype):
            self.fail(f"a fused group works in a float dtype, not {g.dtype}", inputs,
                      DTypeError)
        shape = ew.broadcast_shapes(self, inputs)
        out = self.out
        if out.reduce is not None:
            if any(not 0 <= a < len(shape) for a in out.reduce):
                self.fail(f"sum axes {out.reduce} out of range for {shape}", inputs)
            shape = reduced_shape(shape, out.reduce, out.keepdims)
        return shape, g.dtype

    def evaluate(self, *arrays):
        out = self.out
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        value = np.broadcast_to(self.group.evaluate_step(out.step, arrays), shape)
        if out.reduce is None:
            return value
        return np.sum(value, axis=out.reduce, keepdims=out.keepdims)

    # -- autodiff: the chain rule over the group's expression DAG -----------------------
    local = ("∂fused/∂{x}",)
    vjp_text = ("unbroadcast({g} · ∂fused/∂{x})",)

    def vjp(self, z, g, k):
        out = self.out
        x = z.inputs[k]
        dgroup = self.group.derivative(out.step, k, seeded=True)
        shape = np.broadcast_shapes(*(t.shape for t in z.inputs))
        if dgroup is None:  # the output does not depend on this input
            return broadcast_to(_zero(x), x.shape)
        if out.reduce is not None:
            g = reshape_to(g, reduced_shape(shape, out.reduce, True))
        return unbroadcast(Tensor.make(Fused(dgroup, 0), [*z.inputs, g]), x.shape)


def _zero(x: Tensor) -> Tensor:
    return constant(0, dtype=x.dtype)


# -- canonical form -------------------------------------------------------------------------
def canonical(group: FusedGroup) -> tuple[FusedGroup, list[int], list[int]]:
    """``group`` relabelled so that groups computing one DAG up to renaming come out
    equal (an unrolled loop's steps, fused in different topological orders, then share one
    kernel): ``(canonical group, inputs, outputs)``, where the canonical group's input j is
    the old input ``inputs[j]`` and its output k the old output ``outputs[k]``.

    Each step and input gets a key from its shape in the DAG (its op, params and
    operands' keys, bottom-up; then its users' keys and its outputs, top-down).  Steps are
    renumbered by a topological sort taking the smallest key first (ties keep their old
    order), inputs by first use, outputs by step.  Only independent steps change places:
    every output keeps its expression tree, so every value rounds as before (the operands
    of add and mul, ordered by key, are exchanged at most, as fusion already does).

    >>> import graphc as gc
    >>> from graphc.passes.fusion import fusion
    >>> a, b = gc.input("a", (3,)), gc.input("b", (3,))
    >>> def group(y):
    ...     return fusion(gc.Graph(y)).outputs[0].op.group
    >>> one, two = group(gc.tanh(a) * gc.sigmoid(b)), group(gc.sigmoid(b) * gc.tanh(a))
    >>> one.text == two.text, one.text
    (True, 's0 = tanh(x0); s1 = sigmoid(x1); s2 = mul(s0, s1) -> s2 [float32]')
    """
    users, in_users = _uses(group)
    key, in_key = _keys(group, users, in_users)
    order = _smallest_key_first(group.steps, users, key)
    new_step = {s: k for k, s in enumerate(order)}
    new_steps, inputs = _relabel(group, order, new_step, key, in_key)
    outputs = sorted(range(len(group.outputs)), key=lambda k: (
        new_step[group.outputs[k].step], repr((group.outputs[k].reduce,
                                                group.outputs[k].keepdims))))
    moved = tuple(FusedOutput(new_step[group.outputs[k].step], group.outputs[k].reduce,
                              group.outputs[k].keepdims) for k in outputs)
    result = FusedGroup(tuple(new_steps), moved, group.dtype,
                        tuple(group.input_dtypes[j] for j in inputs), group.tag)
    return result, inputs, outputs


def _uses(group: FusedGroup) -> tuple[list[list], list[list]]:
    """Who reads each step and each input: ``(step, operand position)`` pairs, the
    position -1 for an operand of a commutative op."""
    users: list[list] = [[] for _ in group.steps]
    in_users: list[list] = [[] for _ in group.input_dtypes]
    for s, st in enumerate(group.steps):
        for pos, r in enumerate(st.args):
            place = -1 if st.fn in _COMMUTATIVE else pos
            if r[0] == "step":
                users[r[1]].append((s, place))
            elif r[0] == "in":
                in_users[r[1]].append((s, place))
    return users, in_users


def _keys(group: FusedGroup, users, in_users) -> tuple[list[str], list[str]]:
    """The canonical key of every step and input: bottom-up from ops and operands, then
    top-down from users and outputs."""
    steps = group.steps
    outs = [[] for _ in steps]
    for o in group.outputs:
        outs[o.step].append(repr((o.reduce, o.keepdims)))

    def up(in_key):
        key: list[str] = []
        for st in steps:
            args = [in_key[r[1]] if r[0] == "in" else key[r[1]] if r[0] == "step"
                    else _digest("const", repr(r[1])) for r in st.args]
            if st.fn in _COMMUTATIVE:
                args.sort()
            key.append(_digest(st.fn.name, repr(st.params), *args))
        return key

    first = up([_digest("in", d) for d in group.input_dtypes])
    down: list[str] = [""] * len(steps)
    for s in reversed(range(len(steps))):
        down[s] = _digest(first[s], *sorted(f"{down[u]}{p}" for u, p in users[s]), *outs[s])
    in_key = [_digest("in", d, *sorted(f"{down[u]}{p}" for u, p in uses))
              for d, uses in zip(group.input_dtypes, in_users)]
    return [_digest(k, d) for k, d in zip(up(in_key), down)], in_key


def _smallest_key_first(steps, users, key) -> list[int]:
    """A topological order of the steps taking the smallest key among the ready ones."""
    waiting = [sum(r[0] == "step" for r in st.args) for st in steps]
    ready = [(key[s], s) for s in range(len(steps)) if not waiting[s]]
    order: list[int] = []
    while ready:
        ready.sort()
        _, s = ready.pop(0)
        order.append(s)
        for u, _ in users[s]:
            waiting[u] -= 1
            if not waiting[u]:
                ready.append((key[u], u))
    return order


def _relabel(group: FusedGroup, order, new_step, key, in_key):
    """The steps in ``order`` with renumbered operands (inputs by first use), and the old
    input of each new one."""
    inputs: list[int] = []
    new_in: dict[int, int] = {}
    new_steps = []
    for s in order:
        st = group.steps[s]
        refs = list(st.args)
        if st.fn in _COMMUTATIVE:  # steps, then inputs, then numbers (as fusion orders them)
            refs.sort(key=lambda r: (1, in_key[r[1]]) if r[0] == "in" else (0, key[r[1]])
                      if r[0] == "step" else (2, _digest("const", repr(r[1]))))
        args = []
        for r in refs:
            if r[0] == "in" and r[1] not in new_in:
                new_in[r[1]] = len(inputs)
                inputs.append(r[1])
            args.append(("in", new_in[r[1]]) if r[0] == "in" else
                        ("step", new_step[r[1]]) if r[0] == "step" else r)
        new_steps.append(FusedStep(st.fn, st.params, tuple(args)))
    inputs += [j for j in range(group.arity) if j not in new_in]  # inputs no step reads
    return new_steps, inputs


_COMMUTATIVE = (ew.add, ew.mul)


def _digest(*parts: str) -> str:
    """A short digest of ``parts``, the same in every process (keys kernel sources)."""
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).hexdigest()
