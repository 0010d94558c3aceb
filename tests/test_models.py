"""Backbones: the CIFAR stem, any timm model, grey input, clean state dicts."""

import pytest
import timm
import torch

from leanssl.errors import LeansslError
from leanssl.models.backbones import build_backbone


@pytest.mark.parametrize("name,chans,size", [("small_cnn", 1, 28), ("lean_cnn", 1, 28), ("small_cnn_max", 3, 16),
                                             ("lean_cnn_deep", 1, 28), ("lean_cnn_wide", 3, 16),
                                             ("resnet18_cifar", 3, 32), ("resnet18", 1, 32),
                                             ("vit_tiny_patch16_224", 3, 32), ("mobilenetv3_small_050", 3, 32),
                                             ("vit_tiny_cifar", 1, 28)])
def test_backbones_build_and_give_features(name, chans, size):
    net = build_backbone(name, chans, size).eval()
    with torch.no_grad():
        f = net(torch.randn(2, chans, size, size))
    assert f.shape == (2, net.out_dim)


def test_lean_cnn_is_small_cnn_with_a_16_channel_first_stage_and_global_max_pooling():
    lean, small = build_backbone("lean_cnn", 1, 28).eval(), build_backbone("small_cnn", 1, 28).eval()
    assert lean.features[0].out_channels == 16 and small.features[0].out_channels == 32
    assert [m.out_channels for m in lean.features if isinstance(m, torch.nn.Conv2d)][1:] == [64, 128, 256]
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        maps = lean.features(x)  # (3, 256, 4, 4): the max over each channel's 16 positions, by hand
        ref = torch.stack([torch.stack([maps[i, c].flatten().max() for c in range(256)]) for i in range(3)])
        assert torch.equal(lean(x), ref)
        assert torch.allclose(small(x), small.features(x).mean((2, 3)))  # small_cnn keeps average pooling
    with pytest.raises(RuntimeError, match="size mismatch"):  # one's weights never load into the other silently
        lean.load_state_dict(small.state_dict())


def test_lean_cnn_variants_add_convs_at_the_small_maps_or_width_at_the_last():
    """lean_cnn_deep: a second stride-1 conv in the 7- and 4-px stages; lean_cnn_wide: 512 last channels."""
    def convs(net):
        return [(m.in_channels, m.out_channels, m.stride[0]) for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert convs(build_backbone("lean_cnn_deep", 1, 28)) == [(1, 16, 1), (16, 64, 2), (64, 128, 2), (128, 128, 1),
                                                             (128, 256, 2), (256, 256, 1)]
    wide = build_backbone("lean_cnn_wide", 1, 28)
    assert convs(wide) == [(1, 16, 1), (16, 64, 2), (64, 128, 2), (128, 512, 2)] and wide.out_dim == 512
    lean = build_backbone("lean_cnn", 1, 28)
    n = sum(9 * i * o + 2 * o for i, o, _ in convs(lean))  # conv weights + BN affine, counted by hand
    assert sum(p.numel() for p in lean.parameters()) == n == 378_928
    assert list(lean.state_dict())[:3] == ["features.0.weight", "features.1.weight", "features.1.bias"]  # keys unchanged


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
