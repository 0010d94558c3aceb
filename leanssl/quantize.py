"""Quantised backbones for small devices, through torch's own quantisation tooling (torch.ao, FX graph mode).

- 8 bits: real int8 — post-training static quantisation on the x86 backend (fbgemm/oneDNN kernels):
  per-output-channel symmetric int8 weights, per-tensor affine uint8 activations (min/max calibrated
  on training images; 7-bit activation range, torch's x86 default that keeps fbgemm's int16
  accumulation from overflowing), Conv-BN(-ReLU) folded first.
- fewer bits: simulated (fake) quantisation — the CPU backend has no kernels below 8 bits. The same
  folded graph, weights rounded per output channel to 2^b symmetric levels and every activation
  that int8 quantises rounded to 2^b levels (torch's FakeQuantize, calibrated the same way); the
  arithmetic stays float32.

The quantised model runs on the CPU and maps the same normalised input to the same features.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .errors import LeansslError

INT8 = 8
MIN_BITS, MAX_BITS = 2, 8


def parse_bits(text: str) -> tuple[int, ...]:
    """'8,4' -> (8, 4): the bit-widths to quantise to."""
    try:
        bits = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        bits = ()
    if not bits or any(not MIN_BITS <= b <= MAX_BITS for b in bits):
        raise LeansslError(f"--quantize wants comma-separated bit-widths from {MIN_BITS} to {MAX_BITS}, got {text!r}")
    return tuple(dict.fromkeys(bits))


def how(bits: int) -> str:
    """What quantising to `bits` means here, for reports."""
    if bits == INT8:
        return "int8 (torch.ao x86 kernels; per-channel weights, static uint8 activations)"
    return f"simulated W{bits}A{bits} (fake-quantised; no CPU kernels below 8 bits)"


def _weight_observer(bits: int):
    from torch.ao.quantization import PerChannelMinMaxObserver

    return PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0,
                                              quant_min=-2 ** (bits - 1), quant_max=2 ** (bits - 1) - 1)


def _qconfig(bits: int):
    from torch.ao.quantization import FakeQuantize, MinMaxObserver, QConfig

    if bits == INT8:
        return QConfig(activation=MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=True),
                       weight=_weight_observer(bits))
    act = FakeQuantize.with_args(observer=MinMaxObserver, dtype=torch.quint8, quant_min=0, quant_max=2 ** bits - 1)
    return QConfig(activation=act, weight=_weight_observer(bits))


@torch.no_grad()
def fake_quantize_weights(model: nn.Module, bits: int) -> None:
    """Round every conv and linear weight, in place, per output channel to 2^bits symmetric levels."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            obs = _weight_observer(bits)()
            obs(m.weight)
            scale, zero = obs.calculate_qparams()
            m.weight.copy_(torch.fake_quantize_per_channel_affine(m.weight, scale, zero.int(), 0,
                                                                  obs.quant_min, obs.quant_max))


@torch.no_grad()
def quantize_backbone(backbone: nn.Module, bits: int, calibration: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """A quantised CPU copy of `backbone` (eval mode); `calibration` holds normalised input images."""
    from torch.ao.quantization import QConfigMapping, disable_fake_quant, disable_observer, enable_fake_quant
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if bits == INT8 and "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    model = copy.deepcopy(backbone).cpu().float().eval()
    calibration = calibration.cpu().float().contiguous()
    with warnings.catch_warnings():  # torch.ao's FX mode warns that it is deprecated in favour of PT2E (torchao)
        warnings.simplefilter("ignore")
        try:
            prepared = prepare_fx(model, QConfigMapping().set_global(_qconfig(bits)), example_inputs=(calibration[:2],))
        except Exception as e:  # dynamic control flow that torch.fx cannot trace
            raise LeansslError(f"cannot quantise this backbone: torch.fx could not trace it ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''})") from None
        prepared.apply(disable_fake_quant)  # calibrate on float activations, as int8 does
        for start in range(0, len(calibration), batch_size):
            prepared(calibration[start:start + batch_size])
        if bits == INT8:
            return convert_fx(prepared).eval()
        prepared.apply(disable_observer)
        prepared.apply(enable_fake_quant)
        fake_quantize_weights(prepared, bits)
    return prepared.eval()


CALIBRATION_IMAGES = 512


def calibration_batch(x, info: dict, seed: int = 0, n: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """A seeded sample of at most n uint8 training images, normalised as the backbone's input."""
    import numpy as np

    from .eval.features import to_model_input

    rows = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
    return to_model_input(torch.from_numpy(np.array(x[rows])), info["mean"], info["std"], info["channels"],
                          info["resolution"])


def quantized_features(backbone: nn.Module, bits: int, x_train, x_test, info: dict, seed: int = 0,
                       progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features of both splits from the backbone quantised to `bits` (calibrated on training images)."""
    from .eval.features import extract_features

    net = quantize_backbone(backbone, bits, calibration_batch(x_train, info, seed))
    args = (info["mean"], info["std"], info["channels"], info["resolution"], torch.device("cpu"))
    return tuple(extract_features(net, x, *args, progress=progress, desc=f"{bits}-bit features ({split})")
                 for x, split in ((x_train, "train"), (x_test, "test")))
