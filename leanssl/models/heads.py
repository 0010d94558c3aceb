"""Projection heads shared by the methods."""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 3, last_bn: bool = False, norm: bool = True,
        act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """(Linear-BN-act) x (layers-1), then Linear to out_dim (optionally BN without affine, as SimSiam/Barlow).

    `norm=False` drops the hidden BatchNorms (MoCo v2's head, DINO's ViT-style head); the hidden
    Linears then carry a bias. `act` is the hidden activation (ReLU; DINO uses GELU).
    """
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden, bias=not norm)] + ([nn.BatchNorm1d(hidden)] if norm else []) + [act()]
        d = hidden
    mods.append(nn.Linear(d, out_dim, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)
