"""train.precision: what `auto` resolves to, and bf16 autocast keeping the heads and the loss in float32."""

from __future__ import annotations

import pytest
import torch

from pixelnet.training import loop
from pixelnet.training.loop import emulated_bf16_warning, resolve_precision
from tests.conftest import model_config

CPU = torch.device("cpu")


@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx512f", "avx512_bf16"}, "bf16"),
    ({"avx512f", "amx_tile", "amx_bf16"}, "bf16"),
    ({"avx2", "avx512f"}, "fp32"),  # AVX-512 without its BF16 extension emulates bf16: slower than fp32
    (set(), "fp32"),  # no /proc/cpuinfo (not Linux)
])
def test_auto_is_bf16_only_on_cpus_with_native_bf16(monkeypatch, flags, expected):
    monkeypatch.setattr(loop, "cpu_flags", lambda: frozenset(flags))
    assert resolve_precision("auto", CPU) == expected


@pytest.mark.parametrize("chosen", ["fp32", "bf16"])
def test_an_explicit_precision_is_kept_whatever_the_cpu(monkeypatch, chosen):
    for flags in (set(), {"amx_bf16"}):
        monkeypatch.setattr(loop, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert resolve_precision(chosen, CPU) == chosen


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_cuda_asks_the_device(monkeypatch, supported):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: supported)
    assert resolve_precision("auto", torch.device("cuda")) == ("bf16" if supported else "fp32")


@pytest.mark.parametrize(("precision", "flags", "warns"), [
    ("bf16", {"avx2", "avx512f"}, True),  # set by hand where bf16 is emulated
    ("bf16", {"avx512f", "avx512_bf16"}, False),
    ("bf16", {"amx_bf16"}, False),
    ("bf16", set(), False),  # no /proc/cpuinfo: say nothing rather than guess
    ("auto", {"avx2"}, False),  # auto picks fp32 there itself
    ("fp32", {"avx2"}, False),
])
def test_bf16_by_hand_on_a_cpu_without_native_bf16_warns_naming_the_flags(monkeypatch, precision, flags, warns):
    monkeypatch.setattr(loop, "cpu_flags", lambda: frozenset(flags))
    warning = emulated_bf16_warning(precision, CPU)
    assert (warning is not None) == warns
    if warns:
        assert "amx_bf16" in warning and "avx512_bf16" in warning and "train.precision" in warning
    assert emulated_bf16_warning(precision, torch.device("cuda")) is None


def test_cpu_flags_reads_this_machines_flags():
    flags = loop.cpu_flags()
    assert isinstance(flags, frozenset)
    with open("/proc/cpuinfo") as f:
        line = next((line for line in f if line.startswith("flags")), "")
    assert flags == frozenset(line.partition(":")[2].split())


@pytest.mark.parametrize("arch", ["pixelcnn", "gated", "pixelcnnpp"])
@pytest.mark.parametrize("head", ["softmax", "logistic_mixture"])
def test_under_bf16_autocast_every_head_gives_float32_parameters_close_to_fp32(arch, head):
    from pixelnet.model.build import build_model

    norm = "weight" if arch == "pixelcnnpp" else "batch"
    cfg = model_config(arch=arch, head=head, norm=norm, channels=8, blocks=1, first_kernel=3, kernel=3, levels=256,
                       height=6, width=6, image_channels=3, conditional=True, n_classes=3)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.randint(0, 256, (4, 3, 6, 6), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        full = model(x, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x, labels)
    assert mixed.dtype == torch.float32  # the head ran in float32: its output was never rounded to bf16
    assert not torch.equal(mixed, full)  # the layers below it did run in bf16 ...
    torch.testing.assert_close(mixed, full, rtol=0.1, atol=0.1)  # ... to bf16's accuracy


def test_the_heads_last_layer_is_not_rounded_to_bf16(monkeypatch):
    """With the head in float32, its output is not a bf16 value; with in_float32 turned off it would be."""
    from pixelnet.model import layers
    from pixelnet.model.build import build_model

    cfg = model_config(arch="pixelcnnpp", head="logistic_mixture", norm="weight", channels=8, levels=256, height=6,
                       width=6)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.randint(0, 256, (2, 1, 6, 6), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)

    def rounded_share() -> float:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x).float()
        return (out == out.bfloat16().float()).float().mean().item()

    assert rounded_share() < 0.1
    monkeypatch.setattr("pixelnet.model.pixelcnnpp.in_float32", lambda fn, *xs: fn(*xs))
    assert layers.in_float32 is not None and rounded_share() == 1.0
