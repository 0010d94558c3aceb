"""The methods, by the name used on the command line."""

from __future__ import annotations

from ..errors import LeansslError
from .barlow import BarlowTwins
from .byol import BYOL
from .dino import DINO
from .essl import ESSL
from .mocov2 import MoCoV2
from .npid import NPID
from .simclr import SimCLR
from .simreg import SimReg
from .simsiam import SimSiam
from .swav import SwAV
from .twist import TWIST

METHODS = {m.name: m for m in (ESSL, NPID, SimCLR, MoCoV2, BYOL, SimSiam, SwAV, BarlowTwins, DINO, TWIST, SimReg)}


def get_method(name: str):
    if name not in METHODS:
        raise LeansslError(f"unknown method '{name}': choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]
