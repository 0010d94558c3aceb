"""The GPU path, proven as far as a CPU can: bf16 autocast through every method's step, fp32 state, no
host synchronisation in a step, sync-free bank columns and torch.compile. Each test runs on the CPU;
where CUDA is visible it runs there too (benchmarks/gpu_check.py runs this file on the GPU)."""

import os
import shutil


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from leanssl import accel
from leanssl.bank import MemoryBank
from leanssl.cli import main
from leanssl.errors import LeansslError
from leanssl.methods import METHODS, get_method
from leanssl.methods.base import DataInfo
from leanssl.models.backbones import SmallCNN
from leanssl.train.build import param_groups
from test_methods_baselines import TINY as TINY_BASELINES

# leanssl's own methods (not one a test file defines), less simreg, which distils a teacher run from disk:
# the self-supervised methods build from a config alone
PRETRAINERS = [m for m, cls in METHODS.items() if cls.__module__.startswith("leanssl.") and not cls.needs_teacher]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TINY = {**TINY_BASELINES, "essl": dict(dim=8, proj_hidden=16, negatives=16), "npid": dict(dim=8, proj_hidden=16, negatives=16),
        # the queue on and full from the first step, so its code path is part of the step under test
        "swav": {**TINY_BASELINES["swav"], "queue_length": 16, "queue_start_epoch": 0}}


def tiny_method(name, device, n=40, res=12):
    torch.manual_seed(0)
    cls = get_method(name)
    info = DataInfo(num_images=n, channels=1, resolution=res, mean=(0.5,), std=(0.25,))
    m = cls(SmallCNN(1, widths=(4, 8)), info, cls.Config(**TINY[name])).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(m, 5e-4), lr=0.05, momentum=0.9)
    return m.train(), opt


def batch(device, b=8, res=12, seed=0):
    x = torch.randint(0, 256, (b, 1, res, res), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return x.to(device), torch.arange(b, device=device) * 3  # spread-out dataset indices


def train_step(m, opt, x, idx, precision, step=15, seed=1):
    """The training loop's step sequence (leanssl.train): step under autocast, backward, norm, SGD, after_step.
    Step 15 of 10 per epoch: past DINO's and SwAV's frozen first epoch, so every branch of the step runs."""
    m.set_progress(step, 100, 10)
    with accel.autocast(x.device, precision):
        loss, logs = m.training_step(x, idx, torch.Generator(x.device).manual_seed(seed), np.random.default_rng(seed))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.get_total_norm([p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None])
    opt.step()
    m.after_step()
    return loss.detach(), grad_norm


# ---------------------------------------------------------------------------------------------
# Host synchronisation: every op that makes the host wait for the device on CUDA, counted on any device

aten = torch.ops.aten
_WAITS_FOR_VALUE = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim,
                    aten.unique_consecutive, aten.repeat_interleave, aten.equal, aten.is_nonzero}
_INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
_TO_HOST_METHODS = {"item", "tolist", "numpy", "cpu"}


class HostSyncs(TorchDispatchMode):
    """Records each device->host wait of the ops run inside it, backward included: .item()/bool()/float() (as
    _local_scalar_dense), nonzero, masked_select, unique, boolean-mask indexing, copies to the CPU — and
    (HostCalls below) .tolist(), .numpy() and .cpu(), which on a CPU tensor dispatch no op."""

    def __init__(self):
        super().__init__()
        self.events: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in _WAITS_FOR_VALUE:
            self.events.append(str(func))
        elif packet in _INDEXING and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]):
            self.events.append(f"{func} with a boolean mask")
        elif packet in (aten._to_copy, aten.copy_):
            src, dst = (args[0], kwargs.get("device")) if packet is aten._to_copy else (args[1], args[0].device)
            if dst is not None and torch.device(dst).type == "cpu" and src.device.type != "cpu":
                self.events.append(f"{func} to the host")
        return func(*args, **kwargs)


class HostCalls(TorchFunctionMode):
    def __init__(self, events: list[str]):
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in _TO_HOST_METHODS:
            self.events.append(f"Tensor.{func.__name__}")
        return func(*args, **(kwargs or {}))


def host_syncs(fn, device) -> list[str]:
    """The host syncs `fn()` makes; on CUDA also torch.cuda's own sync check, which raises on one."""
    counter = HostSyncs()
    with counter, HostCalls(counter.events):
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("error")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        else:
            fn()
    return counter.events


def old_columns(bank, idx, k, generator=None):
    """bank.columns before the sync-free rewrite (verbatim): the reference for its distribution."""
    n, b = bank.size, idx.numel()
    others = torch.ones(n, dtype=torch.bool, device=idx.device)
    others[idx] = False
    if n <= k + b:
        return torch.cat([idx, others.nonzero().squeeze(1)])
    cand = torch.randperm(n, generator=generator, device=idx.device)[: k + b]
    cand = cand[others[cand]][:k]
    return torch.cat([idx, cand])


@pytest.mark.parametrize("device", DEVICES)
def test_the_counter_catches_each_kind_of_host_sync(device):
    t = torch.arange(6.0, device=device)
    for fn in (lambda: t.sum().item(), lambda: t.tolist(), lambda: t.nonzero(), lambda: t[t > 2], lambda: bool(t.any()),
               lambda: old_columns(MemoryBank(50, 4).to(device), torch.arange(5, device=device), 10)):
        try:
            events = host_syncs(fn, device)
        except RuntimeError as e:  # CUDA's sync check raises
            events = [str(e)]
        assert events, fn
    assert host_syncs(lambda: (t * 2).sum(), device) == []


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", PRETRAINERS)
def test_a_training_step_makes_no_host_sync(name, device):
    m, opt = tiny_method(name, device)
    x, idx = batch(device)
    train_step(m, opt, x, idx, "fp32", step=14)  # first use: lazy initialisation may sync once
    precision = "bf16" if device == "cuda" else "fp32"
    assert host_syncs(lambda: train_step(m, opt, x, idx, precision), device) == []


def test_the_step_test_fails_on_the_old_bank_columns(monkeypatch):
    monkeypatch.setattr(MemoryBank, "columns", old_columns)
    m, opt = tiny_method("essl", "cpu")
    x, idx = batch("cpu")
    assert "aten.index.Tensor with a boolean mask" in host_syncs(lambda: train_step(m, opt, x, idx, "fp32"), "cpu")


# ---------------------------------------------------------------------------------------------
# Bank columns: sync-free, and the same distribution (the same draws) as before


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,b,k", [(50, 5, 10), (50, 5, 45), (50, 5, 60), (200, 16, 100), (30, 30, 5)])
def test_columns_draw_what_the_old_implementation_drew(n, b, k, device):
    bank = MemoryBank(n, 4).to(device)
    for seed in range(5):
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(100 + seed))[:b].to(device)
        new = bank.columns(idx, k, torch.Generator(device).manual_seed(seed))
        old = old_columns(bank, idx, k, torch.Generator(device).manual_seed(seed))
        assert torch.equal(new, old)
        assert host_syncs(lambda: bank.columns(idx, k, torch.Generator(device).manual_seed(seed)), device) == []


def test_columns_are_k_distinct_non_batch_rows_drawn_uniformly():
    n, b, k, draws = 60, 10, 12, 3000
    bank = MemoryBank(n, 4)
    idx = torch.arange(0, 2 * b, 2)
    gen = torch.Generator().manual_seed(0)
    counts = np.zeros(n)
    for _ in range(draws):
        cols = bank.columns(idx, k, gen)
        assert torch.equal(cols[:b], idx) and len(cols) == b + k
        neg = cols[b:]
        assert len(set(neg.tolist())) == k and not set(neg.tolist()) & set(idx.tolist())
        np.add.at(counts, neg.numpy(), 1)
    others = np.setdiff1d(np.arange(n), idx.numpy())
    assert counts[idx.numpy()].sum() == 0
    assert chisquare(counts[others]).pvalue > 1e-3  # uniform over the N - B others (expected draws·k/(N-B) each)
    everything = bank.columns(idx, n, gen)  # N <= k + B: every row once, the batch first
    assert torch.equal(everything[:b], idx) and sorted(everything.tolist()) == list(range(n))


# ---------------------------------------------------------------------------------------------
# bf16 through every method; state stays fp32


def _fp32_state(m):
    return {k: v.dtype for k, v in m.state_dict().items() if v.is_floating_point() and v.dtype != torch.float32}


def _losses(name, device, precision, steps=8):
    """Losses of `steps` steps on one fixed batch and view (the same seed every step), and the method."""
    m, opt = tiny_method(name, device)
    x, idx = batch(device)
    seen = []
    m.backbone.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    losses = [train_step(m, opt, x, idx, precision)[0].item() for _ in range(steps)]
    assert set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}  # the asked-for path really ran
    return np.array(losses), m, opt


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", PRETRAINERS)
def test_bf16_steps_learn_as_fp32_does_and_keep_the_state_fp32(name, device):
    bf16, m, opt = _losses(name, device, "bf16")
    fp32, _, _ = _losses(name, device, "fp32")  # the reference: the same run without autocast
    assert np.isfinite(bf16).all(), bf16
    assert abs(bf16[0] - fp32[0]) <= 0.02 * abs(fp32[0]) + 0.01, (bf16, fp32)  # same weights and views
    # Where fp32 learns on one fixed batch, bf16 does too. MoCo's and SwAV's queues fill with the batch's own
    # near-duplicate keys, so their loss on a fixed batch rises in either precision.
    if fp32[-3:].mean() < fp32[0]:
        assert bf16[-3:].mean() < bf16[0], (bf16, fp32)
    else:
        assert name in ("mocov2", "swav"), fp32
    assert _fp32_state(m) == {}  # bank, EMA teachers, queues, centres, BatchNorm statistics
    assert all(v.dtype == torch.float32 for s in opt.state.values() for v in s.values() if torch.is_tensor(v))


def test_bank_grad_rule_keeps_an_update_smaller_than_bf16_resolution():
    bank = MemoryBank(4, 8)
    cols = torch.tensor([1, 2])
    w0 = bank.weight.clone().double()
    signs = torch.tensor([1.0, -1.0]).repeat(8)[:8]  # not parallel to the row, so renormalising keeps the step
    grad = (w0[cols].abs() * signs).float()
    lr = 2e-4  # each entry moves by 2e-4 of itself: below bf16's rounding (2^-9), far above fp32's (2^-24)
    with accel.autocast(torch.device("cpu"), "bf16"):
        bank.update_grad(cols, grad.bfloat16(), lr)  # a bf16 gradient, as a bf16 backward could give
    expect = F.normalize(w0[cols] - lr * grad.bfloat16().double(), dim=1)
    assert bank.weight.dtype == torch.float32
    torch.testing.assert_close(bank.weight[cols].double(), expect, rtol=0, atol=1e-6)
    assert (bank.weight[cols].double() - F.normalize(w0[cols], dim=1)).abs().max() > 3e-5  # the rows moved
    lost = F.normalize((w0[cols].bfloat16() - lr * grad.bfloat16()).double(), dim=1)  # bank in bf16: lost
    assert torch.equal(lost, F.normalize(w0[cols].bfloat16().double(), dim=1))


def test_precision_defaults_and_bad_value():
    assert accel.resolve_precision(None, torch.device("cpu")) == "fp32"
    assert accel.resolve_precision(None, torch.device("cuda")) == "bf16"
    assert accel.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(LeansslError, match="unknown precision"):
        accel.resolve_precision("fp16", torch.device("cpu"))


def test_cli_trains_in_bf16_on_cpu(tiny_npz, tmp_path):
    import json
    out = tmp_path / "run"
    assert main(["train", "--data", f"npz:{tiny_npz}", "--epochs", "2", "--batch-size", "16", "--precision", "bf16",
                 "--device", "cpu", "--no-progress", "--out", str(out), "--negatives", "32"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["complete"] and np.isfinite(summary["final_loss"])


# ---------------------------------------------------------------------------------------------
# torch.compile: the compiled networks give the eager losses and compile once

# aot_eager: dynamo's graph capture and AOT autograd without code generation (a CPU compile with inductor
# takes minutes); LEANSSL_TEST_INDUCTOR=1 (benchmarks/gpu_check.py sets it) adds the real backend.
BACKENDS = ["aot_eager"] + (["inductor"] if os.environ.get("LEANSSL_TEST_INDUCTOR") == "1" else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,precision", [("essl", "bf16"), ("simclr", "fp32")])
def test_compiled_step_matches_eager_and_does_not_recompile(name, precision, backend, device):
    from torch._dynamo.utils import counters

    if backend == "inductor" and device == "cpu":
        if torch.cuda.is_available():
            pytest.skip("inductor is checked on CUDA on this machine (on a CPU it compiles for minutes)")
        if shutil.which(os.environ.get("CXX", "g++")) is None:
            pytest.skip("inductor on a CPU needs a C++ compiler")
    precision = "bf16" if device == "cuda" else precision
    torch._dynamo.reset()
    x, idx = batch(device)
    m, opt = tiny_method(name, device)
    eager = [train_step(m, opt, x, idx, precision, step=s, seed=s)[0].item() for s in range(4)]
    m, opt = tiny_method(name, device)
    assert set(accel.compile_networks(m, backend)) == {"backbone", "head"}
    compiled = [train_step(m, opt, x, idx, precision, step=0, seed=0)[0].item()]
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0  # the networks were captured
    compiled += [train_step(m, opt, x, idx, precision, step=s, seed=s)[0].item() for s in range(1, 4)]
    assert counters["stats"]["unique_graphs"] == graphs  # new views and state every step, no recompilation
    tol = 2e-2 if precision == "bf16" or backend == "inductor" else 1e-4
    np.testing.assert_allclose(compiled, eager, rtol=tol, atol=tol)
    assert "_orig_mod" not in "".join(m.state_dict())  # checkpoints keep the eager model's keys


def test_cli_flags_reach_the_config():
    from leanssl.cli import _train_config, build_parser

    a = build_parser().parse_args(["train", "--data", "digits", "--compile", "--precision", "bf16"])
    cfg = _train_config(a)
    assert cfg.compile and cfg.precision == "bf16"
    cfg = _train_config(build_parser().parse_args(["train", "--data", "digits"]))
    assert not cfg.compile and cfg.precision is None


def test_a_bf16_divergence_suggests_fp32(tmp_path):
    from leanssl.train.divergence import diverged

    assert "--precision fp32" in str(diverged("loss became nan", 3, 0, 0.1, "bf16", tmp_path / "checkpoint.pt"))
    assert "--precision" not in str(diverged("loss became nan", 3, 0, 0.1, "fp32", tmp_path / "checkpoint.pt"))


class HostToDevice(TorchDispatchMode):
    """Counts copies from the host to another device (on CUDA a blocking one waits for the queued work)."""

    copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in (aten._to_copy, aten.copy_):
            src, dst = (args[0], kwargs.get("device")) if packet is aten._to_copy else (args[1], args[0].device)
            self.copies += dst is not None and torch.device(dst).type != "cpu" and src.device.type == "cpu"
        return func(*args, **kwargs)


@pytest.mark.parametrize("device", ["meta"] + DEVICES)  # meta: a non-CPU device without a GPU
def test_a_resident_epoch_copies_indices_to_the_device_once_not_every_step(device):
    from leanssl.data.loader import DeviceLoader

    x = np.random.default_rng(0).integers(0, 256, size=(40, 1, 4, 4), dtype=np.uint8)
    loader = DeviceLoader(x, device)
    counter = HostToDevice()
    with counter:
        batches = list(loader.epoch(8, epoch_seed=3))
    assert len(batches) == 5 and counter.copies == (0 if device == "cpu" else 1)
    if device != "meta":  # the same images as the host-side reference
        for xb, idx in batches:
            assert torch.equal(xb.cpu(), torch.from_numpy(x)[idx.cpu()])
