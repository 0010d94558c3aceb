"""Backbones: the CIFAR stem, any timm model, grey input, clean state dicts."""

import pytest
import timm
import torch

from leanssl.errors import LeansslError
from leanssl.models.backbones import build_backbone


@pytest.mark.parametrize("name,chans,size", [("small_cnn", 1, 28), ("resnet18_cifar", 3, 32), ("resnet18", 1, 32),
                                             ("vit_tiny_patch16_224", 3, 32), ("mobilenetv3_small_050", 3, 32),
                                             ("vit_tiny_cifar", 1, 28)])
def test_backbones_build_and_give_features(name, chans, size):
    net = build_backbone(name, chans, size).eval()
    with torch.no_grad():
        f = net(torch.randn(2, chans, size, size))
    assert f.shape == (2, net.out_dim)


def test_cifar_stem_keeps_resolution_and_timm_keys():
    net = build_backbone("resnet18_cifar", 3, 32)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and isinstance(net.maxpool, torch.nn.Identity)
    ref = timm.create_model("resnet18", num_classes=0)
    assert set(net.state_dict()) == set(ref.state_dict())  # loads into timm after the stem swap
    with torch.no_grad():
        assert net.layer1(net.act1(net.bn1(net.conv1(torch.randn(1, 3, 32, 32))))).shape[-1] == 32


def test_unknown_backbone_suggests_names():
    with pytest.raises(LeansslError, match="did you mean"):
        build_backbone("resnet1800", 3, 32)
