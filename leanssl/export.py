"""Export a run's backbone alone (no projector, bank or optimizer state) and load it back.

Formats, each with a metadata file beside it (architecture, input size, normalisation, channels,
method, data, epoch, leanssl version and the one line that loads it):

    safetensors   PATH.safetensors + PATH.safetensors.json; timm models load with
                  timm.create_model(name, pretrained=True, num_classes=0, in_chans=C,
                  pretrained_cfg_overlay=dict(file=PATH)), the others with leanssl.load_backbone(PATH)
    timm          a folder (config.json, model.safetensors, leanssl.json) for
                  timm.create_model("local-dir:PATH", pretrained=True); timm architectures only
    torchscript   PATH.pt + PATH.pt.json for torch.jit.load(PATH)
    onnx          PATH.onnx + PATH.onnx.json, batch axis dynamic, checked against PyTorch with onnxruntime

Every format takes the same input: float (B, C, R, R), already normalised as (x/255 - mean)/std.
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path

import torch
from torch import nn

from . import installed_version as _version
from .checks import check_finite
from .errors import LeansslError
from .models.backbones import build_backbone
from .runfolder import RunFolder, check_input_contract, read_json
from .train.config import TrainConfig, load_run_config

FORMATS = ("safetensors", "timm", "torchscript", "onnx")
META_KEY = "leanssl"  # key of the metadata inside a safetensors header
TIMM_META = "leanssl.json"  # metadata file inside an exported timm folder


def write_safetensors(state: dict, path, metadata: dict | None = None) -> None:
    """safetensors' save_file, leaving the file readable as the umask allows (it creates files 0600)."""
    import os

    from safetensors.torch import save_file

    save_file(state, str(path), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def run_metadata(run_dir) -> dict:
    """What a user of the run's backbone needs to know, read from the run folder (no weights loaded)."""
    folder = RunFolder(run_dir)
    cfg = load_run_config(folder.path)
    info = folder.data_info()
    final = folder.has_backbone()
    epoch, seconds = cfg.epochs, (folder.summary() or {}).get("train_seconds")
    if not final:  # load_run_backbone falls back to the last checkpoint: report its epoch and training time
        state = folder.load_checkpoint() if folder.has_checkpoint() else {}
        epoch = state.get("epoch", 0)
        seconds = state.get("elapsed", 0.0) + (state.get("epoch_seconds", 0.0) if state.get("step_in_epoch") else 0.0)
    c, r = info["channels"], info["resolution"]
    return {"architecture": cfg.backbone, "input_size": [c, r, r], "channels": c, "resolution": r,
            "mean": list(info["mean"]), "std": list(info["std"]),
            "input": "float (B, C, R, R), normalised as (x / 255 - mean) / std",
            "method": cfg.method, "data": cfg.data, "epoch": epoch, "epochs": cfg.epochs, "complete": final,
            "time_budget": cfg.time_budget, "train_seconds": seconds,
            "leanssl_version": _version()}


def read_metadata(path) -> dict:
    """Metadata of a run folder, an exported timm folder or an exported file."""
    path = Path(path)
    if RunFolder(path).is_run():
        return run_metadata(path)
    if (path / TIMM_META).is_file():
        return _check_export_meta(read_json(path / TIMM_META), path / TIMM_META)
    side = path.with_name(path.name + ".json")
    if side.is_file():
        return _check_export_meta(read_json(side), side)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                header = f.metadata() or {}
            meta = json.loads(header[META_KEY]) if META_KEY in header else None
        except Exception as e:  # SafetensorError on a damaged header, ValueError on bad JSON inside it
            raise LeansslError(f"{path}: damaged or not a safetensors file ({e})") from None
        if meta is not None:
            return _check_export_meta(meta, f"{path} (its metadata)")
    if not path.exists():
        raise LeansslError(f"no such run folder or exported backbone: {path}")
    raise LeansslError(f"{path}: no leanssl metadata found "
                       f"(expected a run folder, an exported folder, or {side.name} beside the file)")


def _check_export_meta(meta, where) -> dict:
    """Export metadata that load_backbone can build a model from (else one LeansslError naming the file)."""
    check_input_contract(meta, where)
    if not isinstance(meta.get("architecture"), str):
        raise LeansslError(f"{where}: no architecture name in it (damaged or not written by leanssl)")
    return meta


def load_run_backbone(run_dir) -> tuple[nn.Module, TrainConfig, dict]:
    """A run folder's trained backbone (the final one, else the last checkpoint's), its config and data info."""
    folder = RunFolder(run_dir)
    cfg = load_run_config(folder.path)
    info = folder.data_info()
    backbone = build_backbone(cfg.backbone, info["channels"], info["resolution"])
    weights, source = folder.backbone_weights()
    misfit = f"the weights in {source} do not fit backbone {cfg.backbone}"
    try:
        missing, unexpected = backbone.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shapes of another architecture
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), type(e).__name__)
        raise LeansslError(f"{misfit}: {detail}") from None
    if missing or unexpected:
        raise LeansslError(f"{misfit}: {len(missing)} missing tensor(s) (e.g. {', '.join(missing[:2]) or '-'}), "
                           f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2]) or '-'})")
    return backbone, cfg, info


def load_backbone(path, device="cpu") -> nn.Module:
    """A trained backbone in eval mode from a run folder, an exported .safetensors file or timm folder.

    It maps normalised (B, C, R, R) images to (B, D) features; `read_metadata(path)` gives C, R,
    mean and std.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path)
    if RunFolder(path).is_run():
        model = load_run_backbone(path)[0]
    else:
        weights = path / "model.safetensors" if path.is_dir() else path
        if weights.suffix != ".safetensors":
            hint = {"torchscript": "torch.jit.load", "onnx": "onnxruntime.InferenceSession"}.get(meta.get("format"), "")
            raise LeansslError(f"{path}: load_backbone reads run folders and safetensors/timm exports"
                               + (f"; load this {meta['format']} export with {hint}" if hint else ""))
        model = build_backbone(meta["architecture"], meta["channels"], meta["resolution"])
        try:
            state = load_file(str(weights))
            model.load_state_dict(state)
        except Exception as e:  # a damaged file, or weights of another architecture than the metadata says
            lines = str(e).strip().splitlines() or [type(e).__name__]
            raise LeansslError(f"cannot load {weights} as {meta['architecture']}: {lines[-1]}") from None
        check_finite(state, str(weights))
    return model.to(device).eval()


def _takes_img_size(model: nn.Module) -> bool:
    """ViT-like timm models are built for one input size (build_backbone passes it to those that take it)."""
    return "img_size" in inspect.signature(type(model).__init__).parameters


def _timm_line(arch: str, model: nn.Module, meta: dict, file: str) -> str:
    size = f"img_size={meta['resolution']}, " if _takes_img_size(model) else ""
    return (f'timm.create_model("{arch}", pretrained=True, num_classes=0, in_chans={meta["channels"]}, {size}'
            f'pretrained_cfg_overlay=dict(file="{file}"))')


def _check_outputs(reference: torch.Tensor, got: torch.Tensor, what: str) -> float:
    """Max absolute difference, or an error when an exported model disagrees with PyTorch."""
    diff = (reference - got).abs().max().item()
    if diff > 1e-4 * max(1.0, reference.abs().max().item()):
        raise LeansslError(f"the {what} export disagrees with the PyTorch backbone (max abs diff {diff:.3g})")
    return diff


def _example(meta: dict, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, *meta["input_size"], generator=g)


def _export_onnx(model: nn.Module, meta: dict, out: Path) -> float:
    try:
        import onnxruntime as ort
    except ImportError:
        raise LeansslError("--format onnx needs onnx, onnxscript and onnxruntime: pip install -e '.[export]' in a leanssl clone (the export extra)") from None
    x = _example(meta, 2)
    batch = torch.export.Dim("batch", min=1)
    try:  # one self-contained file (no external .data) and no progress chatter
        torch.onnx.export(model, (x,), str(out), input_names=["images"], output_names=["features"],
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
    except ImportError as e:
        raise LeansslError(f"--format onnx: {e} (pip install -e '.[export]' in a leanssl clone (the export extra))") from None
    # Verify at another batch size than the one traced: the batch axis must really be dynamic.
    x3 = _example(meta, 3)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"images": x3.numpy()})[0])
    with torch.no_grad():
        return _check_outputs(model(x3), got, "ONNX")


def _calibration(run_dir, meta: dict, data: str | None, cache_dir) -> torch.Tensor:
    """Normalised training images of `data` (default: the run's) at the backbone's input size."""
    from .data.sources import open_dataset
    from .quantize import calibration_batch

    ds = open_dataset(data or meta["data"], meta["resolution"], cache_dir, progress=False)
    return calibration_batch(ds.pretrain.x, meta).contiguous()


def _export_torchscript(model: nn.Module, meta: dict, out: Path) -> float:
    import warnings

    with warnings.catch_warnings():  # PyTorch deprecates TorchScript; users asking for it know
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            traced = torch.jit.trace(model, _example(meta, 2))
        traced.save(str(out))
        loaded = torch.jit.load(str(out))
    x3 = _example(meta, 3)
    with torch.no_grad():
        return _check_outputs(model(x3), loaded(x3), "TorchScript")


def _quantize_onnx(model: nn.Module, fp32: Path, out: Path, calibration: torch.Tensor) -> dict:
    """onnxruntime's static int8 quantisation of the fp32 export (QDQ: per-channel int8 weights, per-tensor uint8
    activations calibrated on `calibration`); returns what was done, with the int8 model's agreement with fp32."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": b.numpy()} for b in calibration.split(64)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    x = calibration[:64].numpy()
    got = torch.from_numpy(ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0])
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(got, model(calibration[:64]), dim=1).mean().item()
    return {"bits": 8, "weights": "int8, per output channel, symmetric", "activations": "uint8, per tensor, static",
            "tool": "onnxruntime.quantization.quantize_static (QDQ)", "calibration_images": len(calibration),
            "mean_cosine_vs_fp32": cos}


def export_backbone(run_dir, fmt: str, out, quantize: int | None = None, calibration_data: str | None = None,
                    cache_dir=None) -> Path:
    """Write the run's backbone in `fmt` to `out` with its metadata; returns the metadata file's path.

    `quantize=8` (ONNX only) writes an int8 model, calibrated on training images of `calibration_data`
    (default: the run's own data).
    """
    import timm

    if fmt not in FORMATS:
        raise LeansslError(f"unknown export format '{fmt}': choose from {', '.join(FORMATS)}")
    if quantize is not None and (fmt != "onnx" or quantize != 8):
        raise LeansslError("--quantize: only --format onnx --quantize 8 is supported (int8 through onnxruntime); "
                           "lower bit-widths are scored by leanssl eval --quantize")
    meta = run_metadata(run_dir)
    arch = meta["architecture"]
    if fmt == "timm" and not timm.is_model(arch):
        raise LeansslError(f"--format timm needs a timm architecture, and '{arch}' is leanssl's own: "
                           "export --format safetensors and load it with leanssl.load_backbone(path)")
    model = load_backbone(run_dir)
    meta["feature_dim"] = int(model.out_dim)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta.update(format=fmt, source_run=str(Path(run_dir).resolve()), exported=time.strftime("%Y-%m-%d %H:%M:%S"))

    if fmt == "timm":
        out.mkdir(exist_ok=True)
        meta["load"] = f'timm.create_model("local-dir:{out}", pretrained=True)'
        c, r = meta["input_size"][0], meta["resolution"]
        config = {"architecture": arch, "num_classes": 0, "num_features": meta["feature_dim"],
                  "model_args": {"in_chans": c, **({"img_size": r} if _takes_img_size(model) else {})},
                  "pretrained_cfg": {"input_size": [c, r, r], "mean": meta["mean"], "std": meta["std"],
                                     "num_classes": 0, "crop_pct": 1.0}}
        (out / "config.json").write_text(json.dumps(config, indent=2))
        write_safetensors(state, out / "model.safetensors")
        meta_path = out / TIMM_META
    else:
        if fmt == "safetensors":
            meta["load"] = _timm_line(arch, model, meta, str(out)) if timm.is_model(arch) else f'leanssl.load_backbone("{out}")'
            write_safetensors(state, out, metadata={META_KEY: json.dumps(meta)})
        elif fmt == "torchscript":
            meta["load"] = f'torch.jit.load("{out}")'
            meta["max_abs_diff_vs_pytorch"] = _export_torchscript(model, meta, out)
        elif quantize is None:
            meta["load"] = f'onnxruntime.InferenceSession("{out}")  # input "images", output "features"'
            meta["max_abs_diff_vs_pytorch"] = _export_onnx(model, meta, out)
        else:
            meta["load"] = f'onnxruntime.InferenceSession("{out}")  # int8; input "images", output "features"'
            fp32 = out.with_name(out.stem + ".fp32.onnx")
            meta["fp32_max_abs_diff_vs_pytorch"] = _export_onnx(model, meta, fp32)
            meta["quantized"] = _quantize_onnx(model, fp32, out, _calibration(run_dir, meta, calibration_data, cache_dir))
            meta["quantized"]["calibration_data"] = calibration_data or meta["data"]
            fp32.unlink()
        meta_path = out.with_name(out.name + ".json")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta_path
