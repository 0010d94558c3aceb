import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # tiny tensors: a second thread only adds contention on a shared CI machine


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory):
    """A small labelled set in the npz format: 4 classes of 12x12 grey blobs at class-specific places."""
    rng = np.random.default_rng(0)
    n, n_test = 96, 32
    def make(m):
        y = np.arange(m) % 4
        x = rng.integers(0, 60, size=(m, 12, 12)).astype(np.uint8)
        for i, c in enumerate(y):
            r, q = divmod(int(c), 2)
            x[i, r * 6:r * 6 + 6, q * 6:q * 6 + 6] += 150
        return x, y
    x, y = make(n)
    xt, yt = make(n_test)
    path = tmp_path_factory.mktemp("npz") / "tiny.npz"
    np.savez(path, x=x, y=y, x_test=xt, y_test=yt)
    return path
