"""``digits``: scikit-learn's 8x8 handwritten digits (1 channel, default 16 px), a fixed stratified 75/25 split."""

from __future__ import annotations

import numpy as np

from leanssl.data.arrays import write_arrays
from leanssl.data.cache import CacheWriter
from leanssl.data.dataset import Source


def locate() -> Source:
    import sklearn

    # The data ships inside scikit-learn, so its version identifies the source.
    return Source("digits", "digits", "", [["sklearn", sklearn.__version__]], 16, _build)


def _build(writer: CacheWriter, res: int, strict: bool, progress: bool) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # values 0..16
    y = d.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y, random_state=0)
    tr, te = np.sort(tr), np.sort(te)
    return write_arrays(writer, res, 1, [str(i) for i in range(10)], progress, "caching digits",
                        train=(x[tr], y[tr]), test=(x[te], y[te]))  # fmt: skip
