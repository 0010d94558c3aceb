"""Backbones: any timm model by name, a CIFAR-stem ResNet and a 4-px-patch ViT for small images, and a small CPU net.

Every backbone is built without a classifier (`num_classes=0`), maps (B, C, H, W) to (B, D)
features and exposes `out_dim` = D (measured, since timm's `num_features` is the width before
the head for some models, e.g. MobileNetV3's conv_head). Its state dict is the plain timm/torch one, so exported
weights load with `timm.create_model(name, num_classes=0)` (CIFAR variants: see `cifar_stem`).
"""

from __future__ import annotations

import difflib

import timm
import torch
from torch import nn

from ..errors import LeansslError


class SmallCNN(nn.Module):
    """A small VGG-style net (256-d features) that a 2-core CPU can train: `small_cnn` and `lean_cnn`.

    Four conv3x3-BN-ReLU stages, stride 2 between stages, then one global pooling of the last map.
    `small_cnn` (0.39 M parameters): 32/64/128/256 channels, average pooling; about 2k images/s
    on a 2-core CPU at 28 px (train step, batch 256). `lean_cnn` (0.38 M), the default: a
    16-channel first stage (the full-resolution stage is the step's most memory-bound part; essl
    trains 1.13x the images/s end to end) and global max pooling. At equal minutes of essl on all
    of Fashion-MNIST it reads 1.8 points more kNN than small_cnn after 10 (85.5% against 83.7%),
    1.3 of them from the pooling alone (BENCHMARKS.md, "Time to accuracy"); on digits' 16-px images
    it was not better (the demo keeps small_cnn). The weights of one do not load into the other.

    Two variants of lean_cnn for longer runs: `lean_cnn_wide` (512 channels in the last stage,
    512-d features, 0.67 M) trains about a third fewer images/s but read 0.3-0.5 kNN and about one
    linear point more after 10 minutes on Fashion-MNIST, while lifting two-view peers more (not the
    default for that reason); `lean_cnn_deep` (a second conv in the 7- and 4-px stages, 1.12 M) was
    behind at every point of 10 minutes (BENCHMARKS.md).
    """

    def __init__(self, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128, 256), pool: str = "avg",
                 depths: tuple[int, ...] | None = None):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be avg or max, not {pool!r}")
        depths = depths or (1,) * len(widths)
        layers: list[nn.Module] = []
        c = in_chans
        for i, (w, d) in enumerate(zip(widths, depths)):
            for j in range(d):  # the first conv of every stage but the first halves the map
                stride = 2 if i > 0 and j == 0 else 1
                layers += [nn.Conv2d(c, w, 3, stride, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.num_features = self.out_dim = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def cifar_stem(model: nn.Module, in_chans: int) -> nn.Module:
    """Replace a timm ResNet's 7x7/stride-2 stem and max-pool with a 3x3/stride-1 conv and nothing.

    Required for 32-px inputs (lightly #1419): the ImageNet stem shrinks 32 px to 8 px before
    the first block. Key names stay timm's, so `conv1.weight` is the only shape that differs.
    """
    out = model.conv1.out_channels
    model.conv1 = nn.Conv2d(in_chans, out, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


DEFAULT_BACKBONE = "lean_cnn"

# Names leanssl adds to timm's: name -> builder(in_chans, img_size).
_LOCAL = {
    "small_cnn": lambda c, s: SmallCNN(c),
    "small_cnn_max": lambda c, s: SmallCNN(c, pool="max"),
    "lean_cnn": lambda c, s: SmallCNN(c, widths=(16, 64, 128, 256), pool="max"),
    "lean_cnn_deep": lambda c, s: SmallCNN(c, widths=(16, 64, 128, 256), pool="max", depths=(1, 1, 2, 2)),
    "lean_cnn_wide": lambda c, s: SmallCNN(c, widths=(16, 64, 128, 512), pool="max"),
    "resnet18_cifar": lambda c, s: cifar_stem(timm.create_model("resnet18", num_classes=0, in_chans=c), c),
    "resnet50_cifar": lambda c, s: cifar_stem(timm.create_model("resnet50", num_classes=0, in_chans=c), c),
    # timm's ViT-Tiny with 4-px patches (7x7 / 8x8 tokens at 28 / 32 px): vit_tiny_patch16_224 at that size
    # sees one or four 16-px patches. Weights load with timm.create_model("vit_tiny_patch16_224", patch_size=4,
    # img_size=SIZE, in_chans=C, num_classes=0).
    "vit_tiny_cifar": lambda c, s: timm.create_model("vit_tiny_patch16_224", num_classes=0, in_chans=c, img_size=s,
                                                     patch_size=4),
}


def check_backbone_name(name: str) -> None:
    if name in _LOCAL or name in timm.list_models():
        return
    close = difflib.get_close_matches(name, list(_LOCAL) + timm.list_models(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise LeansslError(f"unknown backbone '{name}'{hint}: use {', '.join(sorted(_LOCAL))} or a timm model name")


def build_backbone(name: str, in_chans: int, img_size: int) -> nn.Module:
    """Build a randomly initialised backbone; `model.out_dim` is its output width."""
    check_backbone_name(name)
    if name in _LOCAL:
        model = _LOCAL[name](in_chans, img_size)
    else:
        kwargs = dict(pretrained=False, num_classes=0, in_chans=in_chans)
        try:  # ViTs and other fixed-size models need the input size; convnets reject the argument
            model = timm.create_model(name, img_size=img_size, **kwargs)
        except TypeError:
            model = timm.create_model(name, **kwargs)
    model.eval()
    with torch.no_grad():
        model.out_dim = model(torch.zeros(1, in_chans, img_size, img_size)).shape[1]
    return model.train()
