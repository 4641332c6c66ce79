"""One training step of a workload in each framework, ready to be timed.

Each ``*_step`` function takes a :class:`workloads.Problem` and returns ``(step,
compile_seconds)``, and :func:`graphc_step` the backend it compiled for as a third item.
``step()`` computes the loss and the gradients with respect to ``problem.wrt_names`` and
returns them as framework values (JAX results are waited for, so timing ``step()`` times the
work).  :func:`as_numpy` turns a result into ``(loss, grads)`` NumPy values for comparisons.
A framework that is not installed raises :class:`NotInstalled`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time

import numpy as np

import graphc as gc


class NotInstalled(RuntimeError):
    """A framework that this Python cannot import."""


def version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise NotInstalled(f"{module} not installed")


def graphc_step(problem, backend: str | None = None):
    """Compile loss and gradients with ``gc.compile``; compile seconds cover building the
    backward graph (``gc.grad``), ``gc.compile`` and the first call."""
    start = time.perf_counter()
    grads = gc.grad(problem.loss, list(problem.wrt))
    f = gc.compile([problem.loss, *grads], backend=backend)
    step = device_step(f, problem.feeds) if f.backend == "cuda" else (
        lambda feeds=problem.feeds: f(feeds))
    step()
    return step, time.perf_counter() - start, f.backend


def device_step(f, feeds: dict):
    """A step of ``f`` (backend "cuda") with every feed resident on the GPU and the results
    left there, each step waited for: as the peers' steps on a GPU."""
    from numba import cuda

    from graphc import cuda_backend
    feeds, run = cuda_backend.device_feeds(feeds), f._program.run_device

    def step():
        out = run(feeds)
        cuda.synchronize()
        return out
    return step


def torch_step(problem, loss_fn, device: str = "cpu"):
    """PyTorch eager: ``loss_fn`` on tensors, gradients from ``torch.autograd.grad``; on
    ``device`` ("cuda": the GPU, each step waited for)."""
    _require("torch")
    import torch
    if device == "cuda" and not torch.cuda.is_available():
        raise gc.BackendError(f"torch {torch.__version__} has no CUDA GPU here")
    tensors = {name: torch.from_numpy(np.array(value)).to(device)
               for name, value in problem.feeds.items()}
    leaves = [tensors[name].requires_grad_(True) for name in problem.wrt_names]
    wait = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        loss = loss_fn(tensors)
        result = (loss, *torch.autograd.grad(loss, leaves))
        wait()
        return result

    return step, 0.0


def jax_step(problem, loss_fn):
    """JAX: ``jax.jit(jax.value_and_grad(loss_fn))``; compile seconds are the first call's."""
    _require("jax")
    import jax
    import jax.numpy as jnp
    names = problem.wrt_names
    arrays = {name: jnp.asarray(_jax_dtype(value)) for name, value in problem.feeds.items()}
    wrt = {name: arrays[name] for name in names}
    rest = {name: value for name, value in arrays.items() if name not in wrt}
    jax.block_until_ready(arrays)
    start = time.perf_counter()
    value_and_grad = jax.jit(jax.value_and_grad(lambda w, r: loss_fn({**w, **r})))

    def step():
        loss, grads = jax.block_until_ready(value_and_grad(wrt, rest))
        return (loss, *(grads[name] for name in names))

    step()
    return step, time.perf_counter() - start


def _jax_dtype(value: np.ndarray) -> np.ndarray:
    # JAX runs with 32-bit integers unless jax_enable_x64 is set: convert explicitly.
    return value.astype(np.int32) if value.dtype == np.int64 else value


def as_numpy(result) -> tuple[float, list[np.ndarray]]:
    """``(loss, [grad, ...])`` as NumPy values from any ``step()`` result."""
    arrays = [np.asarray(r.detach().cpu() if hasattr(r, "detach") else
                         r.copy_to_host() if hasattr(r, "copy_to_host") else r) for r in result]
    return float(arrays[0]), arrays[1:]


def set_torch_threads(threads: int) -> None:
    """``torch.set_num_threads`` when torch is installed (environment variables alone do
    not reach an already-initialized intra-op pool)."""
    if importlib.util.find_spec("torch") is not None:
        import torch
        torch.set_num_threads(threads)
