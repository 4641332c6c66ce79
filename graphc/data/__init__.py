"""Small real data sets shipped inside graphc, so examples and tests never download.

- :func:`load_digits`: 1797 handwritten digits, 8x8 pixels, 10 classes: the test set of
  the UCI "Optical Recognition of Handwritten Digits" (E. Alpaydin, C. Kaynak, 1998) as
  scikit-learn ships it; ``digits.npz``, 45 KB; CC BY 4.0 (the data) and BSD-3
  (scikit-learn's copy), see ``LICENSE-digits.txt``.
- :func:`load_text`: Shakespeare's Sonnets 1-18 (1609); ``sonnets.txt``, 11 KB; public
  domain, see ``LICENSE-sonnets.txt``.

>>> from graphc import data
>>> images, labels = data.load_digits()
>>> images.shape, images.dtype, labels.dtype, float(images.max())
((1797, 8, 8), dtype('float32'), dtype('int64'), 1.0)
>>> (x_train, y_train), (x_test, y_test) = data.train_test_split(images, labels)
>>> len(x_train), len(x_test)
(1348, 449)
>>> data.load_text()[:42]
'From fairest creatures we desire increase,'
"""

from __future__ import annotations

import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TEXTS = {"sonnets": "sonnets.txt"}


def path(name: str) -> str:
    """The absolute path of a bundled data file (``"digits.npz"``, ``"sonnets.txt"``)."""
    full = os.path.join(HERE, name)
    if not os.path.isfile(full):
        raise FileNotFoundError(f"graphc.data has no file {name!r} (looked in {HERE}); "
                                f"bundled: {', '.join(sorted(_bundled()))}")
    return full


def _bundled() -> list[str]:
    return [f for f in os.listdir(HERE) if f.endswith((".npz", ".txt"))]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 handwritten digits: ``(images, labels)``.

    ``images`` is float32 (1797, 8, 8) scaled to [0, 1] (the file stores the original
    counts 0..16 as uint8: each pixel counts the "on" pixels of a 4x4 block of a 32x32
    bitmap); ``labels`` is int64 in 0..9, about 180 of each.  This is scikit-learn's
    ``load_digits`` data (the UCI test set by E. Alpaydin and C. Kaynak), byte for byte.
    """
    with np.load(path("digits.npz"), allow_pickle=False) as archive:
        images, labels = archive["images"], archive["labels"]
    return (images.astype(np.float32) / 16.0), labels.astype(np.int64)


def train_test_split(*arrays, test_fraction: float = 0.25, seed: int = 0):
    """Split arrays of equal length into ``(train, test)`` parts by one seeded random
    permutation: returns ``((a_train, b_train, ...), (a_test, b_test, ...))``.

    The default (25 % test, seed 0) is the split every example uses, so their figures are
    comparable: 1348 training and 449 test digits.
    """
    if not arrays:
        raise ValueError("train_test_split: no arrays")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"train_test_split: lengths differ: {[len(a) for a in arrays]}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return tuple(a[train] for a in arrays), tuple(a[test] for a in arrays)


def load_text(name: str = "sonnets") -> str:
    """A bundled public-domain text as one string (``"sonnets"``: Shakespeare's Sonnets
    1-18, 11,218 characters, 56 distinct)."""
    if name not in TEXTS:
        raise ValueError(f"unknown text {name!r}; bundled: {', '.join(TEXTS)}")
    with open(path(TEXTS[name]), encoding="utf-8") as f:
        return f.read()


__all__ = ["load_digits", "load_text", "path", "train_test_split"]
