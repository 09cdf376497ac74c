"""`train.amp`: bf16 autocast where the hardware computes bf16 natively, detected from the CPU's
own flags; fp32 elsewhere, with one line that says which and why."""

import pytest
import torch

from pipeline.core.errors import TrainingError
from pipeline.train.precision import autocast, cpu_flags, native_bf16, resolve_amp

CPU = torch.device("cpu")
ZEN3 = {"avx2", "fma", "sse4_2"}  # AVX2 only: bf16 would be emulated
GENOA = ZEN3 | {"avx512f", "avx512_vnni", "avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN3 | {"avx512f", "amx_tile", "amx_bf16", "amx_int8"}


def test_the_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()  # not Linux: nothing known, so fp32


@pytest.mark.parametrize(
    "flags,native", [(ZEN3, None), (GENOA, "avx512_bf16"), (SAPPHIRE_RAPIDS, "amx_bf16"), (set(), None)]
)
def test_native_bf16_is_detected_from_the_flags(flags, native):
    assert native_bf16(CPU, flags) == native


def test_auto_trains_fp32_on_a_cpu_without_bf16_and_says_so():
    on, line = resolve_amp("auto", CPU, ZEN3)
    assert on is False and line.startswith("train.amp: auto: training in fp32") and "no avx512_bf16" in line
    on, line = resolve_amp("auto", CPU, GENOA)
    assert on is True and "bf16 autocast" in line and "avx512_bf16" in line
    assert resolve_amp("false", CPU, GENOA) == (False, "train.amp: false: training in fp32")
    assert resolve_amp("true", CPU, SAPPHIRE_RAPIDS)[0] is True


def test_true_on_a_cpu_without_bf16_is_a_one_line_error():
    with pytest.raises(TrainingError) as e:
        resolve_amp("true", CPU, ZEN3)
    message = str(e.value)
    assert "train.amp: true" in message and "train.amp: auto" in message and "\n" not in message


def test_autocast_runs_bf16_only_when_on():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast(CPU, True):
        assert layer(x).dtype == torch.bfloat16
    with autocast(CPU, False):
        assert layer(x).dtype == torch.float32
