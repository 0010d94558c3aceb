"""The reader table: a SPEC's kind (the text before ':') -> the format module that locates it.

Each format module has a ``locate`` that finds and checks its files cheaply (what it returns feeds
the cache key) and returns a :class:`~leanssl.data.dataset.Source` whose ``build`` decodes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from leanssl.data.dataset import Source
from leanssl.data.formats import cifar, digits, folder, idx, npz, stl10


@dataclass(frozen=True)
class Reader:
    locate: Callable[..., Source]  # locate(path), or locate() when the format takes no path
    takes_path: bool = True
    default_path: str | None = None  # used when the spec gives no path

    def usage(self, kind: str) -> str:
        """How a spec names this format, for the unknown-spec message."""
        return kind if not self.takes_path else f"{kind}[:PATH]" if self.default_path else f"{kind}:PATH"


READERS: dict[str, Reader] = {
    "digits": Reader(digits.locate, takes_path=False),
    "fashion-mnist": Reader(partial(idx.locate, "fashion-mnist"), default_path=idx.FASHION_MNIST_DEFAULT),
    "mnist": Reader(partial(idx.locate, "mnist")),
    "cifar10": Reader(cifar.locate_cifar10),
    "cifar100": Reader(cifar.locate_cifar100),
    "stl10": Reader(stl10.locate),
    "folder": Reader(folder.locate),  # also what a bare folder PATH is read with
    "npz": Reader(npz.locate),
}
