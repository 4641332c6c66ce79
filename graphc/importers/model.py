"""What an importer returns: the imported graph's inputs, outputs, params and weights."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ir import Tensor


@dataclass
class Model:
    """An imported model (``gc.from_onnx``, ``gc.from_torch``).

    ``inputs`` maps the model's own input names to graphc inputs, ``outputs`` lists the
    output tensors in the model's order, ``params`` maps the model's own parameter names to
    graphc params, and ``weights`` holds the arrays to feed, keyed by graphc tensor name, for
    exactly the params and buffers that ``outputs`` use.
    """

    inputs: dict[str, Tensor]
    outputs: list[Tensor]
    params: dict[str, Tensor] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""  # where the model came from: a file name or a module's class name

    def __repr__(self) -> str:
        def sig(t: Tensor) -> str:
            return f"{t.dtype}{list(t.shape)}"

        ins = ", ".join(f"{k}: {sig(t)}" for k, t in self.inputs.items())
        outs = ", ".join(sig(t) for t in self.outputs)
        return (f"Model({self.source or 'imported'}: ({ins}) -> ({outs}), "
                f"{len(self.params)} params)")
