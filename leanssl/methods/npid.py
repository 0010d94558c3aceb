"""`npid`: Wu et al. 2018 non-parametric instance discrimination — the root of the essl ablation.

It is `essl` with every addition switched off: no SqrtKL, no CutMix, the EMA bank update and a
randomly initialised bank. Same head, temperature, negatives and default batch, so the ablation changes one
thing at a time. (The original NPID used a linear head, τ = 0.07 and 4096 negatives.)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import opt
from .essl import ESSL, EsslConfig


@dataclass
class NpidConfig(EsslConfig):
    kl_weight: float = opt(0.0, "λ_KL of SqrtKL self-distillation (0: off)")
    cutmix_alpha: float = opt(0.0, "CutMix Beta(α, α) (0: off)")
    bank_update: str = opt("ema", "bank update rule: ema (NPID) or grad (essl's correction)")
    calibrate: bool = opt(False, "feature-calibrated bank initialisation (essl's; off: random rows, as NPID)")


class NPID(ESSL):
    name = "npid"
    description = "non-parametric instance discrimination (Wu et al. 2018): essl with every addition off"
    Config = NpidConfig
