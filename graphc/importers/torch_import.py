"""``gc.from_torch``: a ``torch.nn.Module`` as graphc nodes, through ``torch.export``.

The module is exported in the mode it is in (``eval()`` or ``train()``) and decomposed to
the core ATen opset (``run_decompositions()``); each ATen node becomes graphc functions
(``aten_ops.ATEN``, with ``aten_index``'s rules added: one short rule per op).  Parameters
become ``gc.param`` leaves (initialised to the module's values) and buffers state inputs
(``gc.nn.state_input``, which ``gc.train`` steps carry), both named after their torch names
made identifiers (``layer1.0.conv1.weight`` -> ``layer1_0_conv1_weight``); every node is
built inside the ``gc.scope`` of its ``nn.Module`` path (``layer1`` / ``layer1.0`` /
``layer1.0.conv1``), so diagrams group and collapse by module.  torch is imported only when
``from_torch`` runs.
"""

from __future__ import annotations

import contextlib
import functools
import keyword
import operator
import re
import warnings

import numpy as np

from ..errors import GraphError, UnsupportedOpError
from ..inputs import constant, input, param
from ..ir import Tensor, located, scope
from ..nn import state_input
from .aten_index import ATEN  # the table of aten_ops, with the indexing rules added
from .aten_ops import _meta, _unsupported
from .model import Model


def from_torch(module, example_args) -> Model:
    """Import ``module`` (a ``torch.nn.Module``) traced with ``torch.export`` on
    ``example_args`` (a tuple of tensors or arrays; shapes are fixed by them).

    >>> import torch, numpy as np, graphc as gc
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()).eval()
    >>> m = gc.from_torch(net, (torch.zeros(2, 3),))
    >>> list(m.inputs), sorted(m.params), sorted(m.weights), m.outputs[0].shape
    (['input'], ['0.bias', '0.weight'], ['p_0_bias', 'p_0_weight'], (2, 4))
    >>> f = gc.compile(m.outputs, backend="numpy")
    >>> (y,) = f(input=np.ones((2, 3), np.float32), **m.weights)
    >>> bool(np.allclose(y, net(torch.ones(2, 3)).detach().numpy(), atol=1e-6))
    True
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise TypeError(located(f"from_torch: expected a torch.nn.Module, got "
                                f"{type(module).__name__}"))
    args = example_args if isinstance(example_args, (tuple, list)) else (example_args,)
    args = tuple(torch.from_numpy(np.asarray(a)) if isinstance(a, np.ndarray) else a
                 for a in args)
    with warnings.catch_warnings():  # torch's own deprecation noise, not the user's
        warnings.filterwarnings("ignore", r".*treespec, LeafSpec", FutureWarning)
        program = _stop_gradients(torch.export.export(module, args))
        program = program.run_decompositions(_decompositions())
    first: dict[int, str] = {}  # a parameter shared by modules: named_parameters()' name
    aliases = {name: first.setdefault(id(p), name)
               for name, p in module.named_parameters(remove_duplicate=False)}
    return _Importer(program, type(module).__name__, aliases).run()


@functools.cache
def _stop_gradient_op():
    """``graphc::stop_gradient``, a torch op of graphc's own (registered once, when a first
    module is imported): the decompositions keep it, and it imports as gc.stop_gradient."""
    import torch

    @torch.library.custom_op("graphc::stop_gradient", mutates_args=(),
                             schema="(Tensor x) -> Tensor")
    def stop_gradient(x):
        return x.clone()

    @stop_gradient.register_fake
    def _(x):
        return torch.empty_like(x)
    return torch.ops.graphc.stop_gradient.default


def _stop_gradients(program):
    """``program`` with its ``.detach()`` calls and the results of its ``torch.no_grad()``
    blocks marked as graphc::stop_gradient.  The decompositions forget both (detach becomes
    aten.alias, a no_grad block is inlined), and their gradients then flowed: a
    straight-through estimator's ``h + (round(h) - h).detach()`` had the gradient of
    round(h), 0, instead of 1."""
    import torch

    graph, changed = program.graph_module.graph, False
    for node in list(graph.nodes):
        if node.target is torch.ops.aten.detach.default:
            node.target, changed = _stop_gradient_op(), True
        elif node.target is torch.ops.higher_order.wrap_with_set_grad_enabled and \
                node.args[0] is False:
            for user in list(node.users):  # its outputs (getitem)
                with graph.inserting_after(user):
                    stopped = graph.call_function(_stop_gradient_op(), (user,))
                stopped.meta = dict(user.meta)
                user.replace_all_uses_with(stopped, delete_user_cb=lambda n, s=stopped: n is not s)
                changed = True
    if changed:
        program.graph_module.recompile()
    return program


def _decompositions():
    """torch.export's decompositions but for the ops graphc imports whole: hardswish and
    hardsigmoid (PyTorch's gradients at their kinks), softplus, mish, selu and celu (each a
    ``where`` whose branch not taken overflows, 0 * inf in its gradient: NaN at x = 89),
    and sinc (its branch not taken at 0 is 0 / 0: a NaN gradient where torch's is 0)."""
    import torch
    aten = torch.ops.aten
    table = torch.export.default_decompositions()
    for op in (aten.hardswish.default, aten.hardsigmoid.default, aten.softplus.default,
               aten.mish.default, aten.selu.default, aten.celu.default, aten.sinc.default):
        table.pop(op, None)
    return table


class _Importer:
    """One import: the exported program's nodes turned into graphc tensors in order."""

    def __init__(self, program, source: str, aliases=None):
        self.program, self.source = program, source
        self.aliases = aliases or {}  # torch name -> the name named_parameters() gives
        self.env: dict[str, object] = {}  # fx node name -> Tensor, tuple, or None
        self.taken: set[str] = set()
        self.values: dict[str, np.ndarray] = {}  # graphc leaf name -> value
        self.params: dict[str, Tensor] = {}  # torch name -> param
        self.inputs: dict[str, Tensor] = {}
        self.dropouts = 0

    def run(self) -> Model:
        from torch.export.graph_signature import InputKind, OutputKind

        kinds = {spec.arg.name: spec for spec in self.program.graph_signature.input_specs}
        outs = [spec.arg for spec in self.program.graph_signature.output_specs
                if spec.kind == OutputKind.USER_OUTPUT]
        nodes = {n.name: n for n in self.program.graph.nodes}
        needed = _needed([nodes[a.name] for a in outs if getattr(a, "name", None) in nodes])
        for spec in sorted(kinds.values(), key=lambda s: s.kind != InputKind.USER_INPUT):
            if spec.arg.name in needed:  # user inputs first: they keep their own names
                self.env[spec.arg.name] = self.leaf(spec, nodes[spec.arg.name])
        for node in self.program.graph.nodes:
            if node.op == "call_function" and node.name in needed:
                self.env[node.name] = self.call(node)
        outputs = []
        for k, a in enumerate(outs):
            value = self.env.get(getattr(a, "name", None))
            if not isinstance(value, Tensor):
                what = getattr(a, "value", a) if not getattr(a, "name", None) else a
                raise GraphError(located(f"from_torch: output {k} of {self.source} is "
                                         f"{what!r}, not a tensor"))
            outputs.append(value)
        used = {}
        for t in outputs:
            used.update(t.leaves)
        return Model(inputs=self.inputs, outputs=outputs,
                     params={k: p for k, p in self.params.items() if p.op.label in used},
                     weights={k: v for k, v in self.values.items() if k in used},
                     source=self.source)

    def name(self, text: str, prefix: str = "x") -> str:
        """``text`` as a fresh Python identifier (``layer1.0.conv1.weight`` ->
        ``layer1_0_conv1_weight``, ``0.weight`` -> ``p_0_weight`` as torch.export names
        it; a repeat gets ``_2``)."""
        base = re.sub(r"\W", "_", text)
        if not base or base[0].isdigit() or keyword.iskeyword(base):
            base = f"{prefix}_{base}"
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def leaf(self, spec, node) -> Tensor:
        from torch.export.graph_signature import InputKind

        shape, dtype = _meta(node)
        if spec.kind == InputKind.USER_INPUT:
            t = input(self.name(node.name), shape, dtype)
            self.inputs[node.name] = t
            return t
        target = spec.target
        value = (self.program.state_dict[target] if target in self.program.state_dict
                 else self.program.constants[target])
        value = value.detach().cpu().numpy().copy()
        if spec.kind == InputKind.CONSTANT_TENSOR:
            return constant(value)
        if spec.kind == InputKind.PARAMETER:
            target = self.aliases.get(target, target)
        with _scopes(_module_path(target.rsplit(".", 1)[0] if "." in target else "")):
            name = self.name(target, "p" if spec.kind == InputKind.PARAMETER else "b")
            if spec.kind == InputKind.PARAMETER:
                t = param(name, shape, _TorchValue(value), dtype)
                self.params[target] = t
            else:  # a buffer: state that gc.train steps carry (and evaluation reads)
                t = state_input(name, shape, dtype=dtype)
        self.values[name] = value
        return t

    def call(self, node):
        args = [self.arg(a, node) for a in node.args]
        kwargs = {k: self.arg(a, node) for k, a in node.kwargs.items()}
        if node.target is operator.getitem:
            value = args[0][args[1]]
            if value is None:
                _unsupported(node.args[0], f"its output {args[1]} is used, by "
                                           f"{node.name!r}; only the first is imported")
            return value
        rule = ATEN.get(_op_name(node))
        if rule is None:
            _unsupported(node)
        with _scopes(_call_scopes(node)):
            try:
                return rule(self, node, *args, **kwargs)
            except UnsupportedOpError:
                raise
            except GraphError as err:
                raise type(err)(f"from_torch: node {node.name!r} ({node.target}): "
                                f"{err}") from None

    def arg(self, a, node):
        import torch.fx

        if isinstance(a, torch.fx.Node):
            return self.env[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(self.arg(b, node) for b in a)
        return a


class _TorchValue:
    """A param's initializer: the module's own value (``gc.init_params`` gives it)."""

    __slots__ = ("value",)

    def __init__(self, value: np.ndarray):
        self.value = value

    def __call__(self, shape, rng) -> np.ndarray:
        return self.value.copy()

    def __repr__(self) -> str:
        return "torch_value"


# ---------------------------------------------------------------------------------------
# The exported graph: names, metadata, module paths


def _needed(outputs) -> set[str]:
    """Names of the fx nodes the outputs depend on (running-statistic updates are not)."""
    seen, stack = set(), list(outputs)
    while stack:
        node = stack.pop()
        if node.name not in seen:
            seen.add(node.name)
            stack.extend(node.all_input_nodes)
    return seen


def _op_name(node) -> str:
    """``aten.relu`` for ``aten.relu.default``: rules are per op, overloads by arguments."""
    target = node.target
    packet = getattr(target, "_overloadpacket", None)
    if packet is None:
        return str(target)
    return f"{packet._qualified_op_name.split('::')[0]}.{packet.__name__}"


def _module_path(path: str) -> list[str]:
    """Scopes of a module path: ``layer1.0.conv1`` -> layer1, layer1.0, layer1.0.conv1."""
    parts = path.split(".") if path else []
    return [".".join(parts[:k + 1]) for k in range(len(parts))]


def _call_scopes(node) -> list[str]:
    """The scopes of the module calls a node was made in, outermost first: each module's
    path (``layer1``, ``layer1.0``), a module's second call marked as torch.export marks it
    (``pool@1``; its children ``head@1.0``), so that each call is a group of its own."""
    scopes, parent, parent_scope = [], "", ""
    for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
        if not path:  # the root module
            continue
        if parent and path.startswith(parent + ".") and parent_scope != parent:
            scope = parent_scope + path[len(parent):]  # inside a renamed call: named by it
        else:
            scope = path + ("@" + key.rsplit("@", 1)[1] if "@" in key else "")
        scopes.append(scope)
        parent, parent_scope = path, scope
    return scopes


@contextlib.contextmanager
def _scopes(paths):
    with contextlib.ExitStack() as stack:
        for p in paths:
            stack.enter_context(scope(p))
        yield
