"""Compute precision for training, evaluation and the server: `auto` picks bf16 only where the hardware does it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from model.precision import cpu_has_native_bf16, resolve_dtype

X86_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 avx avx2 avx512f avx512bw avx512vl"
CPUINFO = {
    "x86-avx512-bf16": f"processor\t: 0\nmodel name\t: Xeon\nflags\t\t: {X86_FLAGS} avx512_bf16\n\n",
    "x86-amx": f"processor\t: 0\nflags\t\t: {X86_FLAGS} amx_bf16 amx_tile amx_int8\n\n",
    "x86-avx512-only": f"processor\t: 0\nflags\t\t: {X86_FLAGS} avx512_vnni\n\n",
    "arm-bf16": "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics bf16 i8mm\n\n",
    "arm-plain": "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n\n",
    "bf16-in-a-model-name": "processor\t: 0\nmodel name\t: bf16 avx512_bf16 lookalike\nflags\t\t: fpu sse2\n\n",
}
NATIVE = {"x86-avx512-bf16", "x86-amx", "arm-bf16"}


@pytest.mark.parametrize("name", sorted(CPUINFO))
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, name: str) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO[name])
    assert cpu_has_native_bf16(path) is (name in NATIVE)
    want = torch.bfloat16 if name in NATIVE else torch.float32
    assert resolve_dtype("auto", torch.device("cpu"), path) == want


def test_explicit_settings_win_and_a_gpu_or_unknown_cpu_decide_auto(tmp_path: Path) -> None:
    native, plain, missing = tmp_path / "native", tmp_path / "plain", tmp_path / "missing"
    native.write_text(CPUINFO["x86-amx"])
    plain.write_text(CPUINFO["x86-avx512-only"])
    assert resolve_dtype("float32", torch.device("cpu"), native) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu"), plain) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda"), plain) == torch.bfloat16
    assert not cpu_has_native_bf16(missing)  # no /proc/cpuinfo (not Linux): fp32
    assert resolve_dtype("auto", torch.device("cpu"), missing) == torch.float32


def test_explicit_bf16_on_a_cpu_without_it_warns_once_and_is_honoured(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    native, plain = tmp_path / "native", tmp_path / "plain"
    native.write_text(CPUINFO["x86-amx"])
    plain.write_text(CPUINFO["arm-plain"])
    with caplog.at_level(logging.WARNING, logger="model.precision"):
        assert resolve_dtype("bfloat16", torch.device("cpu"), native) == torch.bfloat16
        assert not caplog.records
        for _ in range(3):
            assert resolve_dtype("bfloat16", torch.device("cpu"), plain) == torch.bfloat16
    assert len(caplog.records) == 1
    assert "emulated" in caplog.records[0].getMessage() and str(plain) in caplog.records[0].getMessage()


def test_an_unknown_setting_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'float16'"):
        resolve_dtype("float16", torch.device("cpu"))
