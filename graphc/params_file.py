"""Parameter files (``.npz``): reading one, and checking it against the names, shapes and
dtypes a model expects.  :func:`graphc.train.load_params` and the checkpoints of
:mod:`graphc.distributed` build on them."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from .errors import CheckpointError
from .ir import Tensor

OPTIMIZER_PREFIX = "opt_"  # optimizer state and the step count in parameter files


def read_params(path) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file ``path`` (``.npz`` appended where that file exists)
    by name; CheckpointError where there is no such file or it is not one."""
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".npz"):
        path += ".npz"
    try:
        archive = np.load(path, allow_pickle=False)
        if not hasattr(archive, "files"):
            raise CheckpointError(f"{path}: holds a single array, not named parameters")
        with archive:
            arrays = {k: archive[k] for k in archive.files}
    except FileNotFoundError:
        raise CheckpointError(f"no parameter file {path!r}") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CheckpointError(f"{path}: not a readable .npz parameter file ({err})") from None
    return arrays


def write_params(file, arrays: dict) -> None:
    """Write ``{name: array}`` to ``file`` (a path or a binary file) as ``.npz``, as
    ``np.savez`` does, for any names (``np.savez(file, **arrays)`` takes a param named
    ``file`` or ``allow_pickle`` for its own argument)."""
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def shapes_of(like) -> dict:
    """``{name: (shape, dtype)}`` of ``{name: array or Tensor}``."""
    return {n: _shape_dtype(v) for n, v in like.items()}


def check_params(path, arrays, expected, require) -> None:
    """Raise one CheckpointError listing every way ``arrays`` (read from ``path``) differ
    from ``expected`` (:func:`shapes_of`): a name of ``require`` (None: of ``expected``)
    missing, a name unknown (optimizer state aside), a shape or a dtype."""
    required = expected if require is None else require
    problems = [f"missing {n!r}" for n in required if n not in arrays]
    problems += [f"unexpected {n!r}" for n in arrays
                 if n not in expected and not n.startswith(OPTIMIZER_PREFIX)]
    for n, (shape, dtype) in expected.items():
        if n in arrays:
            have = arrays[n]
            if have.shape != tuple(shape):
                problems.append(f"{n!r} has shape {have.shape}, expected {tuple(shape)}")
            elif have.dtype != dtype:
                problems.append(f"{n!r} has dtype {have.dtype}, expected {dtype}")
    if problems:
        raise CheckpointError(f"{path} does not match the model:\n  " + "\n  ".join(problems))


def _shape_dtype(value):
    if isinstance(value, Tensor):
        return value.shape, np.dtype(value.dtype)
    value = np.asarray(value)
    return value.shape, value.dtype
