"""`npid`: Wu et al. 2018 non-parametric instance discrimination — the root of the essl ablation.

It is `essl` with every addition switched off: no SqrtKL, no CutMix, the EMA bank update and a
randomly initialised bank. Same head, temperature and negatives, so the ablation changes one
thing at a time. (The original NPID used a linear head, τ = 0.07 and 4096 negatives.)
"""

from __future__ import annotations

from dataclasses import dataclass

from .essl import ESSL, EsslConfig


@dataclass
class NpidConfig(EsslConfig):
    kl_weight: float = 0.0
    cutmix_alpha: float = 0.0
    bank_update: str = "ema"
    calibrate: bool = False


class NPID(ESSL):
    name = "npid"
    Config = NpidConfig
