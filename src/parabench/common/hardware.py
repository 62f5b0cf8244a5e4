"""This machine's CPU as the numbers depend on it: its model name, the instruction sets that change results
and speed (AVX2, AVX-512, AVX512-BF16, AMX), and the hardware class label that groups throughput."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from pathlib import Path

# /proc/cpuinfo flag -> the name records and tables use.
ISA_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16",
             "amx_int8": "AMX-INT8"}  # fmt: skip


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def short_cpu_name(cpu: str) -> str:
    """'Intel(R) Xeon(R) Platinum 8480C' -> 'Intel Xeon Platinum 8480C'; 'AMD EPYC 7B13 ...' kept."""
    for noise in ("(R)", "(TM)", "(tm)", " CPU", " Processor"):
        cpu = cpu.replace(noise, "")
    return " ".join(cpu.split("@")[0].split()) or "unknown CPU"


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_isa() -> list[str]:
    """The instruction sets of ISA_FLAGS this CPU has."""
    flags = cpu_flags()
    return [name for flag, name in ISA_FLAGS.items() if flag in flags]


def hardware_label(cpu: str, isa: Iterable[str], gpu: str | None = None) -> str:
    """The hardware class throughput is grouped by: the GPU, else the CPU's short name and its widest vector
    ISA (AMX > AVX-512 > AVX2)."""
    if gpu:
        return gpu
    names = set(isa)
    widest = next((name for name in ("AMX-BF16", "AVX-512", "AVX2") if name in names), "no AVX2")
    return f"{short_cpu_name(cpu)}, {widest.removesuffix('-BF16')}"


def this_cpu() -> str:
    """This machine's CPU hardware class, e.g. 'AMD EPYC, AVX2' or 'Intel Xeon, AMX'."""
    return hardware_label(cpu_model(), cpu_isa())
