"""Batched augmentation on the training device, with per-sample random parameters.

The SimCLR / MoCo-v2 / BYOL view recipe (RandomResizedCrop, ColorJitter, RandomGrayscale,
GaussianBlur, Solarize, horizontal flip) applied to a whole uint8 batch ``(B, C, H, W)`` at once,
on whatever device the batch lives on. There is no Python loop over samples and no host sync
(``.item()``, boolean indexing, host-to-device copies) in the hot path: every per-sample decision
is a tensor, and "sample i skips op X" is a neutral factor or a 0/1 ``lerp`` weight (exact, and
much faster than ``torch.where`` on CPU), so every sample costs the same work. Every random draw
goes through the caller's ``torch.Generator``. In a torchrun job (one process per device) each
process draws the parameters of the whole global batch and keeps its own rows, so the views do not
depend on how many processes share the batch (``leanssl.distributed.BatchShard``).

Semantics follow torchvision (``transforms.v2``) op by op; the differences are listed here:

* Crop-and-resize is one ``grid_sample`` (bilinear, border padding) with a per-sample affine
  ``theta`` built from the integer crop box; the flip is folded into ``theta`` as a sign. When the
  crop can be larger than the output (multi-crop local views), each output pixel averages a
  k x k grid of bilinear samples (k fixed per call from shapes and config), i.e. the same
  box-prefilter ``roi_align(sampling_ratio=k)`` applies, instead of torchvision's antialiased
  resize. ``benchmarks/aug_speed.py`` times this against ``torchvision.ops.roi_align``.
* Colour jitter runs in an exact per-sample random order (what ``ColorJitter`` does per image).
  Brightness, contrast and saturation are all "blend with a reference and clamp", so one slot
  computes whichever op the sample has there; hue (the costly one) is computed once for the whole
  batch, with each sample's cheap ops split into those before and those after its hue step.
* Grayscale sources stay 1-channel: for C == 1 only brightness and contrast apply, saturation,
  hue and RandomGrayscale are no-ops (as in torchvision/PIL for single-channel images).
* The blur kernel size is ~10% of the *output* size (odd, >= 3), reflect padding, per-sample
  sigma; it is computed for the whole batch and kept where the sample's mask is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from leanssl.distributed import batch_shard
from leanssl.errors import LeansslError

__all__ = [
    "AugConfig",
    "AugParams",
    "BatchAugment",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "blur_kernel_size",
    "color_jitter",
    "crop_theta",
    "gaussian_blur",
    "resized_crop",
    "rgb_to_grayscale",
    "sample_crop_boxes",
    "solarize",
    "supersample_factor",
]

# ITU-R 601-2 luma, the weights torchvision and PIL use.
_LUMA = (0.2989, 0.587, 0.114)

# Colour-jitter op ids; columns of AugParams.factors use the same order.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
_SKIP = 3  # in a "cheap" slot (brightness/contrast/saturation), id 3 means "nothing here"

_CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before the centre crop


@dataclass
class AugConfig:
    scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop area range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float | None = None  # None -> 0.5 when the output size is > 32 px, else 0 (the paper's recipe)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0  # BYOL/DINO use it on some views; 0 by default

    def __post_init__(self) -> None:
        _check_range("scale", self.scale, lo=0.0, hi=1.0)
        _check_range("ratio", self.ratio, lo=0.0, hi=math.inf)
        _check_range("blur_sigma", self.blur_sigma, lo=0.0, hi=math.inf)
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            if p is not None and not 0.0 <= p <= 1.0:
                raise LeansslError(f"AugConfig.{name} must be in [0, 1], got {p}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise LeansslError(f"AugConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise LeansslError(f"AugConfig.hue must be in [0, 0.5] (a fraction of a turn), got {self.hue}")

    def blur_prob(self, size: int) -> float:
        if self.blur_p is not None:
            return self.blur_p
        return 0.5 if size > 32 else 0.0


def _check_range(name: str, r: tuple[float, float], lo: float, hi: float) -> None:
    if len(r) != 2 or not (lo < r[0] <= r[1] <= hi):
        raise LeansslError(f"AugConfig.{name} must be (low, high) with {lo} < low <= high <= {hi}, got {r}")


@dataclass
class AugParams:
    """Per-sample random parameters for one batch; every field has B rows on the batch's device."""

    boxes: torch.Tensor  # (B, 4) float: x0, y0, w, h of the crop, integer-valued, input pixels
    flip: torch.Tensor  # (B,) bool
    jitter: torch.Tensor  # (B,) bool: colour jitter applied (factors are neutral where False)
    factors: torch.Tensor  # (B, 4) brightness, contrast, saturation factors and hue shift (turns)
    order: torch.Tensor  # (B, 4) long: a permutation of the 4 jitter ops, applied left to right
    gray: torch.Tensor  # (B,) bool
    blur: torch.Tensor  # (B,) bool
    sigma: torch.Tensor  # (B,) blur sigma in output pixels
    solarize: torch.Tensor  # (B,) bool

    def select(self, rows: torch.Tensor) -> "AugParams":
        """The parameters of the given rows."""
        return AugParams(*(getattr(self, f.name)[rows] for f in fields(self)))


# --------------------------------------------------------------------------------------------
# Geometry: crop boxes -> affine theta -> one grid_sample


def _fallback_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's centre-crop fallback size (w, h) after 10 failed attempts."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return width, int(round(width / min(ratio)))
    if in_ratio > max(ratio):
        return int(round(height * max(ratio))), height
    return width, height


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """RandomResizedCrop boxes ``(B, 4) = x0, y0, w, h`` (integer-valued floats), vectorised.

    Same distribution as torchvision's ``get_params``: 10 candidate boxes per sample are drawn at
    once, the first that fits is kept, and rows where none fits get the central fallback box.
    """
    shape = (batch, _CROP_ATTEMPTS)
    area = float(height * width)
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(shape, generator=generator, device=device))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(shape, generator=generator, device=device))
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)

    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    found = ok.any(dim=1)
    fw, fh = _fallback_box(height, width, ratio)
    w = torch.where(found, w.gather(1, first).squeeze(1), float(fw))
    h = torch.where(found, h.gather(1, first).squeeze(1), float(fh))

    # randint(0, n - size + 1) as floor(u * (n - size + 1)); the clamp guards float rounding at u -> 1.
    u = torch.rand((batch, 2), generator=generator, device=device)
    x0 = torch.floor(u[:, 0] * (width - w + 1)).clamp_max_(width - w)
    y0 = torch.floor(u[:, 1] * (height - h + 1)).clamp_max_(height - h)
    x0 = torch.where(found, x0, float((width - fw) // 2))
    y0 = torch.where(found, y0, float((height - fh) // 2))
    return torch.stack([x0, y0, w, h], dim=1)


def crop_theta(boxes: torch.Tensor, height: int, width: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample ``affine_grid`` theta (B, 2, 3) mapping output coords onto the crop box.

    With ``align_corners=False`` normalised x in [-1, 1] spans pixel *edges* 0..W, so the box
    [x0, x0 + w] is ``x_in = (w / W) * x_out + (2 x0 + w) / W - 1``; a flip negates the x_out term.
    """
    x0, y0, w, h = boxes.unbind(dim=1)
    theta = boxes.new_zeros(boxes.shape[0], 2, 3)
    sx = w / width
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * x0 + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * y0 + h) / height - 1
    return theta


def supersample_factor(
    height: int, width: int, size: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> int:
    """Sub-samples per output pixel side so that downscaling crops average instead of alias.

    An upper bound on the crop side, known on the host from shapes and config (no sync): the
    largest box any attempt can produce, or the whole image when the centre fallback can occur.
    """
    area = height * width
    max_w = math.sqrt(area * scale[1] * ratio[1])
    max_h = math.sqrt(area * scale[1] / ratio[0])
    if max_w > width or max_h > height:  # some attempts can fail -> fallback box, at most the image
        max_w, max_h = width, height
    return max(1, math.ceil(max(max_w, max_h) / size - 1e-6))


def resized_crop(
    x: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    flip: torch.Tensor | None = None,
    supersample: int = 1,
) -> torch.Tensor:
    """Crop each sample's box and resize it to ``size`` x ``size`` in one ``grid_sample``.

    ``supersample`` = k samples a (k*size)^2 grid and average-pools k x k, i.e. a box prefilter
    over each output pixel's footprint when the crop is larger than the output.
    """
    b, c, height, width = x.shape
    theta = crop_theta(boxes, height, width, flip).to(x.dtype)
    n = size * supersample
    grid = F.affine_grid(theta, [b, c, n, n], align_corners=False)
    # "border" clamps like torchvision's resize does at the image edge (zeros would darken it).
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if supersample > 1:
        out = F.avg_pool2d(out, supersample)
    return out


# --------------------------------------------------------------------------------------------
# Colour: torchvision semantics, per-sample factors of shape (B,), images in [0, 1]


def _per_sample(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return f.to(x.dtype).view(-1, 1, 1, 1)


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma (torchvision's arithmetic); 1 channel is its own gray."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return r.mul(_LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2])


def _blend_(x: torch.Tensor, ref: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend`` in place: x <- clamp(f * x + (1 - f) * ref, 0, 1).

    ``x.lerp_(ref, 1 - f)`` is one pass and leaves x exactly unchanged for f == 1 (torch's lerp
    is exact at weight 0), which is how samples that skip the op pass through.
    """
    return x.lerp_(ref, 1 - _per_sample(f, x)).clamp_(0.0, 1.0)


def _gray_mean(gray: torch.Tensor) -> torch.Tensor:
    return gray.mean(dim=(1, 2, 3), keepdim=True)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * _per_sample(f, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend_(x.clone(), _gray_mean(rgb_to_grayscale(x)), f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return _blend_(x.clone(), rgb_to_grayscale(x), f)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate HSV hue by ``shift`` (B,) turns, as torchvision's ``adjust_hue``; identity for C == 1.

    Hue rotation keeps each pixel's max and min channel (HSV value and chroma), so only the hue
    is computed, shifted, and the pixel rebuilt as ``min + chroma * hexcone(hue)`` — no HSV tensor
    and no gather; ~4x faster than ``kornia.enhance.adjust_hue`` on CPU (benchmarks/aug_speed.py).
    Matches torchvision to ~1e-6; samples with shift 0 are returned exactly.
    """
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    chroma = maxc - minc
    inv = chroma.clamp_min(1e-12).reciprocal_()  # chroma 0 -> all differences are 0 -> hue 0
    # Hue in sextants by which channel is the max (r wins ties, as in torchvision). The branch is
    # chosen with lerp on 0/1 masks: exact, and several times faster than torch.where on CPU.
    h6 = torch.lerp((r - g).mul_(inv).add_(4.0), (b - r).mul_(inv).add_(2.0), (maxc == g).to(x.dtype))
    h6 = torch.lerp(h6, (g - b).mul_(inv), (maxc == r).to(x.dtype))
    shift = _per_sample(shift, x)
    h6.add_(6.0 * shift).remainder_(6.0)
    # hsv -> rgb at unit chroma, the "shader" form of the hexcone, clamped to [0, 1]:
    # R = |h6 - 3| - 1, G = 2 - |h6 - 2|, B = 2 - |h6 - 4|. Built in place in one buffer.
    rgb = h6.repeat(1, 3, 1, 1)
    rgb[:, 0:1].sub_(3.0)
    rgb[:, 1:2].sub_(2.0)
    rgb[:, 2:3].sub_(4.0)
    rgb.abs_()
    rgb[:, 0:1].sub_(1.0)
    rgb[:, 1:3].neg_().add_(2.0)
    rgb.clamp_(0.0, 1.0).mul_(chroma).add_(minc)
    return rgb.lerp_(x, (shift == 0).to(x.dtype))


def _cheap_slot_(x: torch.Tensor, op: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """In place, per sample, apply brightness / contrast / saturation / nothing (op = 0 / 1 / 2 / 3).

    All three are ``blend(x, ref, f)`` with ref = 0, the grayscale mean, or the grayscale image,
    so one pass serves every sample whatever op it has in this slot; "nothing" is f = 1.
    """
    gray = rgb_to_grayscale(x)
    is_sat = _per_sample(op == SATURATION, x)
    is_con = _per_sample(op == CONTRAST, x)
    ref = torch.addcmul(_gray_mean(gray) * is_con, gray, is_sat)  # 0 for brightness and skip
    f = factors.gather(1, op.clamp(max=SATURATION).unsqueeze(1)).squeeze(1)
    f = torch.where(op == _SKIP, torch.ones_like(f), f)
    return _blend_(x, ref, f)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, use_hue: bool = True) -> torch.Tensor:
    """ColorJitter with per-sample factors ``(B, 4)`` applied in per-sample ``order`` ``(B, 4)``.

    Hue is computed once for the batch: each sample's cheap ops are split into those ordered
    before its hue step (3 slots) and those after it (3 more slots). Neutral factors
    (1, 1, 1, 0) make a sample pass through unchanged. ``use_hue=False`` skips the hue pass
    (hue range 0, or 1-channel images) and needs only the first 3 slots.
    """
    b = x.shape[0]
    x = x.clone()  # the slots work in place
    hue_pos = (order == HUE).to(torch.uint8).argmax(dim=1)  # (B,) in 0..3
    # The three cheap ops in the sample's order: skip over the column that holds hue.
    slots = torch.arange(3, device=x.device).expand(b, 3)
    cheap = order.gather(1, slots + (slots >= hue_pos.unsqueeze(1)).long())
    if not use_hue:
        hue_pos = torch.full_like(hue_pos, 3)  # every cheap op counts as "before hue"
    for t in range(3):
        _cheap_slot_(x, torch.where(hue_pos > t, cheap[:, t], _SKIP), factors)
    if use_hue:
        x = adjust_hue(x, factors[:, HUE])
        for t in range(3):
            _cheap_slot_(x, torch.where(hue_pos <= t, cheap[:, t], _SKIP), factors)
    return x


# --------------------------------------------------------------------------------------------
# Blur and solarize


def blur_kernel_size(size: int) -> int:
    """~10% of the image side, odd, at least 3 (SimCLR's rule: 23 px at 224)."""
    k = int(0.1 * size)
    return max(3, k + 1 - k % 2)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma (B,), reflect padding.

    A depthwise (grouped) conv over B*C channels, so each sample convolves with its own kernel.
    """
    b, c, height, width = x.shape
    half = kernel_size // 2
    d = torch.arange(-half, half + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (d / sigma.to(x.dtype).unsqueeze(1)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, K)
    y = F.pad(x.reshape(1, b * c, height, width), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, kernel.view(b * c, 1, 1, kernel_size), groups=b * c)
    y = F.conv2d(y, kernel.view(b * c, 1, kernel_size, 1), groups=b * c)
    return y.view(b, c, height, width)


def solarize(x: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert pixels >= threshold in the masked samples (torchvision's solarize on [0, 1])."""
    return torch.where(mask.view(-1, 1, 1, 1) & (x >= threshold), 1.0 - x, x)


# --------------------------------------------------------------------------------------------


class BatchAugment:
    """Random views of a uint8 batch, augmented on its own device; see the module docstring.

    ``aug(x, generator)`` returns float32 ``(B, C, size, size)``, normalised with mean/std.
    ``size``/``scale`` can be overridden per call for multi-crop (e.g. 96 px global views and
    12 px local views at scale (0.05, 0.14)). Input may also be floating point in [0, 1].
    """

    def __init__(self, cfg: AugConfig, size: int, mean: tuple[float, ...], std: tuple[float, ...]):
        if len(mean) != len(std) or len(mean) not in (1, 3):
            raise LeansslError(f"mean and std need 1 or 3 values each, got {len(mean)} and {len(std)}")
        if size < 1:
            raise LeansslError(f"augmentation output size must be positive, got {size}")
        self.cfg = cfg
        self.size = size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._stats: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- parameters ----------------------------------------------------------------------

    def sample_params(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        size: int | None = None,
        scale: tuple[float, float] | None = None,
    ) -> AugParams:
        """Draw every per-sample parameter for batch ``x`` (only its shape and device are used).

        The draws are the same in number and order whatever the probabilities are, so a given
        generator state maps to the same boxes when, say, blur is switched off.
        """
        cfg = self.cfg
        size = size or self.size
        b, c, height, width = x.shape
        dev = x.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator, device=dev)

        boxes = sample_crop_boxes(b, height, width, scale or cfg.scale, cfg.ratio, generator, dev)
        flip = rand(b) < cfg.flip_p

        jitter = rand(b) < cfg.jitter_p
        u = rand(b, 4)
        ranges = [
            (max(0.0, 1 - cfg.brightness), 1 + cfg.brightness),
            (max(0.0, 1 - cfg.contrast), 1 + cfg.contrast),
            (max(0.0, 1 - cfg.saturation), 1 + cfg.saturation),
            (-cfg.hue, cfg.hue),
        ]
        if c == 1:  # saturation and hue do not exist for one channel
            ranges[SATURATION], ranges[HUE] = (1.0, 1.0), (0.0, 0.0)
        # Built column by column from Python scalars: a torch.tensor(list) here would be a
        # host-to-device copy, which synchronises a CUDA stream.
        neutral = (1.0, 1.0, 1.0, 0.0)
        factors = torch.stack(
            [torch.where(jitter, lo + (hi - lo) * u[:, i], neutral[i]) for i, (lo, hi) in enumerate(ranges)], dim=1
        )
        order = rand(b, 4).argsort(dim=1)  # a uniform random permutation per sample

        gray = (rand(b) < cfg.gray_p) & (c == 3)
        blur = rand(b) < cfg.blur_prob(size)
        s_lo, s_hi = cfg.blur_sigma
        sigma = s_lo + (s_hi - s_lo) * rand(b)
        solar = rand(b) < cfg.solarize_p
        return AugParams(boxes, flip, jitter, factors, order, gray, blur, sigma, solar)

    # -- application ---------------------------------------------------------------------

    def apply(
        self, x: torch.Tensor, params: AugParams, *, size: int | None = None, scale: tuple[float, float] | None = None
    ) -> torch.Tensor:
        """Apply drawn ``params`` to ``x``; ``scale`` only bounds the anti-alias supersampling."""
        cfg = self.cfg
        size = size or self.size
        _, c, height, width = self._check(x)

        k = supersample_factor(height, width, size, scale or cfg.scale, cfg.ratio)
        out = resized_crop(self._as_float(x), params.boxes, size, params.flip, supersample=k)
        if not x.is_floating_point():
            out = out.div_(255.0)

        if cfg.jitter_p > 0:
            use_hue = c == 3 and cfg.hue > 0
            out = color_jitter(out, params.factors, params.order, use_hue=use_hue)
        if c == 3 and cfg.gray_p > 0:
            out = torch.lerp(out, rgb_to_grayscale(out).expand_as(out), _per_sample(params.gray, out))
        if cfg.blur_prob(size) > 0:
            blurred = gaussian_blur(out, params.sigma, blur_kernel_size(size))
            out = torch.lerp(out, blurred, _per_sample(params.blur, out))
        if cfg.solarize_p > 0:
            out = solarize(out, params.solarize)
        return self._normalize(out)

    def __call__(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        size: int | None = None,
        scale: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        self._check(x)
        if generator is not None and generator.device.type != x.device.type:
            raise LeansslError(f"augmentation generator is on {generator.device}, the batch on {x.device}")
        shard = batch_shard()
        if shard is None:
            params = self.sample_params(x, generator, size=size, scale=scale)
        else:
            # One process of several (torchrun): draw for the global batch, as one process would, and
            # keep this rank's rows; the expanded view only lends its shape and device to the draws.
            rows, total = shard.rows(x.shape[0], x.device)
            whole = x[:1].expand(total, *x.shape[1:])
            params = self.sample_params(whole, generator, size=size, scale=scale).select(rows)
        return self.apply(x, params, size=size, scale=scale)

    def plain(self, x: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """No augmentation: centre square, antialiased resize if the size differs, normalise."""
        size = size or self.size
        _, _, height, width = self._check(x)
        side = min(height, width)
        if height != width:
            top, left = (height - side) // 2, (width - side) // 2
            x = x[:, :, top : top + side, left : left + side]
        out = x.to(torch.float32, copy=True) if x.is_floating_point() else x.float() / 255.0
        if side != size:
            out = F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return self._normalize(out)

    # -- helpers -------------------------------------------------------------------------

    def _check(self, x: torch.Tensor) -> torch.Size:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise LeansslError(f"augmentation expects a (B, 1 or 3, H, W) batch, got shape {tuple(x.shape)}")
        if len(self.mean) not in (1, x.shape[1]):
            raise LeansslError(f"{len(self.mean)} normalisation means for a {x.shape[1]}-channel batch")
        return x.shape

    @staticmethod
    def _as_float(x: torch.Tensor) -> torch.Tensor:
        return x.float() if x.dtype != torch.float32 else x

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """In place: x is always a buffer this class allocated."""
        key = (x.device, x.dtype)
        if key not in self._stats:  # cached: creating them is a host-to-device copy on CUDA
            self._stats[key] = tuple(
                torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for v in (self.mean, self.std)
            )
        mean, std = self._stats[key]
        return x.sub_(mean).div_(std)
