"""Tests for leanssl.data.augment: geometry, torchvision parity of each op, randomness plumbing."""

import itertools

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from leanssl.data.augment import (
    AugConfig,
    BatchAugment,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    gaussian_blur,
    resized_crop,
    sample_crop_boxes,
)
from leanssl.errors import LeansslError

MEAN3, STD3 = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
MEAN1, STD1 = (0.1307,), (0.3081,)

# Everything but the crop switched off, so geometry can be checked against plain().
NO_COLOUR = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)


def _batch(b=8, c=3, h=32, w=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w or h), dtype=torch.uint8, generator=g)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _plain_ref(x, mean, std):
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x.float() / 255 - m) / s


# -- output contract -------------------------------------------------------------------------


@pytest.mark.parametrize("c,size,blur_p", [(3, 32, None), (3, 40, 1.0), (1, 28, None)])
def test_output_shape_dtype_and_range(c, size, blur_p):
    mean, std = (MEAN3, STD3) if c == 3 else (MEAN1, STD1)
    aug = BatchAugment(AugConfig(blur_p=blur_p, solarize_p=0.5), size, mean, std)
    y = aug(_batch(c=c, h=size), _gen(0))
    assert y.shape == (8, c, size, size) and y.dtype == torch.float32
    lo = (0 - torch.tensor(mean)) / torch.tensor(std)
    hi = (1 - torch.tensor(mean)) / torch.tensor(std)
    per_channel = y.transpose(0, 1).reshape(c, -1)
    assert (per_channel.min(1).values >= lo - 1e-5).all() and (per_channel.max(1).values <= hi + 1e-5).all()


def test_plain_is_exact_normalisation():
    x = _batch()
    aug = BatchAugment(AugConfig(), 32, MEAN3, STD3)
    assert torch.equal(aug.plain(x), _plain_ref(x, MEAN3, STD3))


def test_plain_resizes_with_antialias_and_centre_crops():
    aug = BatchAugment(AugConfig(), 16, MEAN1, STD1)
    x = _batch(b=2, c=1, h=32)
    expected = TF.resize(x.float() / 255, [16, 16], antialias=True)
    assert torch.allclose(aug.plain(x), (expected - MEAN1[0]) / STD1[0], atol=1e-5)
    wide = _batch(b=2, c=1, h=16, w=24)  # centre 16x16 square, no resize
    assert torch.equal(aug.plain(wide), _plain_ref(wide[:, :, :, 4:20], MEAN1, STD1))


def test_inputs_are_not_modified():
    aug = BatchAugment(AugConfig(blur_p=0.5), 16, MEAN3, STD3)
    for x in (_batch(h=16), torch.rand(4, 3, 16, 16)):
        before = x.clone()
        aug(x, _gen(0)), aug.plain(x)
        assert torch.equal(x, before)
    x = torch.rand(4, 3, 8, 8)
    before = x.clone()
    order = torch.rand(4, 4, generator=_gen(1)).argsort(1)
    factors = torch.tensor([1.3, 0.7, 1.4, 0.09]).repeat(4, 1)
    for out in (color_jitter(x, factors, order), adjust_contrast(x, factors[:, 1]), adjust_hue(x, factors[:, 3])):
        assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()


def test_float_input_in_unit_range():
    aug = BatchAugment(AugConfig(), 16, MEAN3, STD3)
    x = _batch(h=16)
    assert torch.allclose(aug(x.float() / 255, _gen(3)), aug(x, _gen(3)), atol=1e-5)
    assert torch.allclose(aug.plain(x.float() / 255), aug.plain(x), atol=1e-6)


def test_bad_input_is_a_leanssl_error():
    aug = BatchAugment(AugConfig(), 8, MEAN3, STD3)
    with pytest.raises(LeansslError):
        aug(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(LeansslError):
        AugConfig(scale=(0.0, 1.0))


# -- randomness ------------------------------------------------------------------------------


def test_seeded_generator_is_deterministic_and_seed_matters():
    aug = BatchAugment(AugConfig(blur_p=0.5, solarize_p=0.3), 32, MEAN3, STD3)
    x = _batch()
    a, b, c = aug(x, _gen(1)), aug(x, _gen(1)), aug(x, _gen(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_parameters_differ_per_sample():
    aug = BatchAugment(AugConfig(), 32, MEAN3, STD3)
    p = aug.sample_params(_batch(b=64), _gen(0))
    assert len({tuple(r) for r in p.boxes.tolist()}) > 50
    assert 0 < p.flip.sum() < 64 and 0 < p.jitter.sum() < 64 and 0 < p.gray.sum() < 64
    jittered = p.factors[p.jitter]
    assert jittered.std(dim=0).min() > 0.01  # every factor varies across samples
    assert len({tuple(r) for r in p.order.tolist()}) > 10  # per-sample op order
    assert ((p.factors[~p.jitter] - torch.tensor([1.0, 1.0, 1.0, 0.0])).abs().max() == 0)


def test_crop_boxes_follow_random_resized_crop():
    boxes = sample_crop_boxes(2000, 40, 60, (0.2, 1.0), (3 / 4, 4 / 3), _gen(0))
    x0, y0, w, h = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 60).all() and (y0 + h <= 40).all()
    assert torch.equal(boxes, boxes.round())
    frac = w * h / (40 * 60)
    assert frac.min() > 0.17 and frac.max() <= 1.0  # integer rounding moves the area a little
    assert (w / h).min() > 0.7 and (w / h).max() < 1.42
    assert frac.mean() < 0.6  # large boxes are rejected when they do not fit, as in torchvision


def test_crop_box_distribution_matches_torchvision():
    from torchvision.transforms import RandomResizedCrop

    n, h, w = 4000, 40, 60
    ours = sample_crop_boxes(n, h, w, (0.2, 1.0), (3 / 4, 4 / 3), _gen(0))
    torch.manual_seed(0)
    img = torch.zeros(1, h, w)
    draws = [RandomResizedCrop.get_params(img, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]
    theirs = torch.tensor([[j, i, bw, bh] for i, j, bh, bw in draws], dtype=torch.float32)
    for boxes in (ours, theirs):
        boxes[:, 0] /= w - boxes[:, 2] + 1  # offset as a fraction of its range
    area = lambda b: b[:, 2] * b[:, 3] / (h * w)  # noqa: E731
    assert abs(area(ours).mean() - area(theirs).mean()) < 0.025
    assert abs((ours[:, 2] / ours[:, 3]).mean() - (theirs[:, 2] / theirs[:, 3]).mean()) < 0.02
    assert abs(ours[:, 0].mean() - theirs[:, 0].mean()) < 0.03


def test_crop_boxes_fall_back_to_centre_crop():
    # ratio 2 at full area never fits a square image: torchvision's fallback is (w=W, h=W/(4/3))
    boxes = sample_crop_boxes(4, 32, 32, (1.0, 1.0), (4 / 3, 2.0), _gen(0))
    assert torch.equal(boxes, torch.tensor([[0.0, 4.0, 32.0, 24.0]]).expand(4, 4))


# -- geometry --------------------------------------------------------------------------------


def test_identity_crop_equals_plain():
    cfg = AugConfig(scale=(1, 1), ratio=(1, 1), flip_p=0.0, **NO_COLOUR)
    aug = BatchAugment(cfg, 32, MEAN3, STD3)
    x = _batch()
    assert torch.allclose(aug(x, _gen(0)), aug.plain(x), atol=1e-5)


def test_flip_equals_flipped_plain():
    cfg = AugConfig(scale=(1, 1), ratio=(1, 1), flip_p=1.0, **NO_COLOUR)
    aug = BatchAugment(cfg, 32, MEAN3, STD3)
    x = _batch()
    assert torch.allclose(aug(x, _gen(0)), aug.plain(x).flip(-1), atol=1e-5)


def test_box_offsets_are_pixel_exact():
    x = torch.rand(2, 3, 32, 32)
    boxes = torch.tensor([[5.0, 7.0, 16.0, 16.0], [0.0, 16.0, 16.0, 16.0]])
    out = resized_crop(x, boxes, 16, flip=torch.tensor([False, True]))
    assert torch.allclose(out[0], x[0, :, 7:23, 5:21], atol=1e-6)
    assert torch.allclose(out[1], x[1, :, 16:32, 0:16].flip(-1), atol=1e-6)


def test_downscaled_crops_average_instead_of_aliasing():
    # a one-pixel checkerboard shrunk 8x: averaging gives flat grey, point sampling would not
    board = ((torch.arange(96).view(-1, 1) + torch.arange(96)) % 2 * 255).to(torch.uint8)
    x = board.expand(2, 1, 96, 96).contiguous()
    cfg = AugConfig(scale=(1, 1), ratio=(1, 1), flip_p=0.0, **NO_COLOUR)
    y = BatchAugment(cfg, 12, (0.0,), (1.0,))(x, _gen(0))
    assert (y - 127.5 / 255).abs().max() < 0.02


def test_multi_crop_override():
    aug = BatchAugment(AugConfig(), 32, MEAN3, STD3)
    x = _batch()
    params = aug.sample_params(x, _gen(0), scale=(0.05, 0.14))
    area = params.boxes[:, 2] * params.boxes[:, 3] / 32**2
    assert area.max() < 0.2
    y = aug(x, _gen(0), size=12, scale=(0.05, 0.14))
    assert y.shape == (8, 3, 12, 12) and torch.isfinite(y).all()


# -- colour ops against torchvision ----------------------------------------------------------


@pytest.mark.parametrize(
    "ours,theirs,factors",
    [
        (adjust_brightness, TF.adjust_brightness, (0.6, 1.4)),
        (adjust_contrast, TF.adjust_contrast, (0.6, 1.4)),
        (adjust_saturation, TF.adjust_saturation, (0.6, 1.4)),
        (adjust_hue, TF.adjust_hue, (-0.1, 0.07)),
    ],
)
def test_colour_ops_match_torchvision(ours, theirs, factors):
    x = torch.rand(2, 3, 16, 16, generator=_gen(0))
    x[:, :, :4] = x[:, :1, :4]  # some gray pixels (hue's chroma == 0 branch)
    out = ours(x, torch.tensor(factors))
    for i, f in enumerate(factors):
        assert torch.allclose(out[i], theirs(x[i], f), atol=2e-6), (ours.__name__, f)


def test_one_channel_colour_ops_match_torchvision():
    x = torch.rand(2, 1, 8, 8, generator=_gen(0))
    for ours, theirs in [(adjust_brightness, TF.adjust_brightness), (adjust_contrast, TF.adjust_contrast)]:
        out = ours(x, torch.tensor([0.7, 1.3]))
        for i, f in enumerate((0.7, 1.3)):
            assert torch.allclose(out[i], theirs(x[i], f), atol=1e-6)
    assert torch.equal(adjust_saturation(x, torch.tensor([0.5, 2.0])), x)
    assert torch.equal(adjust_hue(x, torch.tensor([0.1, -0.1])), x)


def test_jitter_applies_each_samples_own_order():
    perms = list(itertools.permutations(range(4)))  # all 24 orders, one per sample
    x = torch.rand(len(perms), 3, 8, 8, generator=_gen(0))
    factors = torch.tensor([1.3, 0.7, 1.4, 0.09]).repeat(len(perms), 1)
    out = color_jitter(x, factors, torch.tensor(perms))
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i, perm in enumerate(perms):
        ref = x[i]
        for op in perm:
            ref = ops[op](ref, factors[i, op].item())
        assert torch.allclose(out[i], ref, atol=1e-5), perm


def test_jitter_with_neutral_factors_is_exact_identity():
    x = torch.rand(4, 3, 8, 8, generator=_gen(0))
    neutral = torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(4, 1)
    order = torch.rand(4, 4, generator=_gen(1)).argsort(1)
    assert torch.equal(color_jitter(x, neutral, order), x)


def test_grayscale_gives_equal_channels():
    aug = BatchAugment(AugConfig(gray_p=1.0), 16, (0.5,) * 3, (0.5,) * 3)  # same mean/std per channel
    y = aug(_batch(h=16), _gen(0))
    assert torch.allclose(y[:, 0], y[:, 1], atol=1e-6) and torch.allclose(y[:, 1], y[:, 2], atol=1e-6)


def test_one_channel_end_to_end():
    aug = BatchAugment(AugConfig(blur_p=0.5, solarize_p=0.2), 28, MEAN1, STD1)
    x = _batch(b=16, c=1, h=28)
    y = aug(x, _gen(0))
    assert y.shape == (16, 1, 28, 28) and torch.isfinite(y).all()
    assert y.std() > 0.1
    assert aug.plain(x).shape == (16, 1, 28, 28)


# -- blur, solarize --------------------------------------------------------------------------


def test_blur_matches_torchvision_and_keeps_constants():
    x = torch.rand(2, 3, 20, 20, generator=_gen(0))
    sigma = torch.tensor([0.5, 1.8])
    out = gaussian_blur(x, sigma, 5)
    for i in range(2):
        assert torch.allclose(out[i], TF.gaussian_blur(x[i], [5, 5], [sigma[i].item()] * 2), atol=1e-6)
    const = torch.full((3, 3, 20, 20), 0.3)
    assert torch.allclose(gaussian_blur(const, torch.tensor([0.1, 1.0, 2.0]), 7), const, atol=1e-6)


def test_blur_in_pipeline_preserves_mean_of_constant_image():
    aug = BatchAugment(AugConfig(blur_p=1.0, jitter_p=0.0, gray_p=0.0), 40, (0.0,) * 3, (1.0,) * 3)
    x = torch.full((4, 3, 40, 40), 100, dtype=torch.uint8)
    assert torch.allclose(aug(x, _gen(0)), torch.full((4, 3, 40, 40), 100 / 255), atol=1e-6)


def test_solarize_matches_torchvision():
    cfg = AugConfig(scale=(1, 1), ratio=(1, 1), flip_p=0.0, solarize_p=1.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    aug = BatchAugment(cfg, 16, (0.0,) * 3, (1.0,) * 3)
    x = _batch(b=2, h=16)
    expected = TF.solarize(x.float() / 255, 0.5)
    assert torch.allclose(aug(x, _gen(0)), expected, atol=1e-5)


# -- device ----------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_deterministic_and_sync_free():
    aug = BatchAugment(AugConfig(blur_p=0.5, solarize_p=0.2), 32, MEAN3, STD3)
    x = _batch(b=64).cuda()
    g = lambda s: torch.Generator(device="cuda").manual_seed(s)  # noqa: E731
    aug(x, g(0))  # warm-up outside the sync check (lazy CUDA init may sync)
    torch.cuda.set_sync_debug_mode("error")
    try:
        a = aug(x, g(0))
        b = aug(x, g(0))
        aug(x, g(0), size=12, scale=(0.05, 0.14))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(a, b)
    cpu = BatchAugment(AugConfig(), 32, MEAN3, STD3).plain(x.cpu())
    assert torch.allclose(aug.plain(x).cpu(), cpu, atol=1e-6)
