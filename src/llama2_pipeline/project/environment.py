"""The software and hardware a run computed on, as MLflow tags, and whether two runs can be bit-identical.

:func:`environment` gives the facts as flat ``env.*`` tags: Python and the versions of the packages
that compute or write the outputs, the CPU (model, vendor, the instruction sets the math libraries
dispatch on, usable cores), the GPU if any, and the switches that select the math libraries' code
paths (``ATEN_CPU_CAPABILITY``, ``MKL_CBWR``, ``MKL_ENABLE_INSTRUCTIONS``, ``ONEDNN_MAX_CPU_ISA``,
thread counts). It never imports torch: the facts only torch knows (its CPU kernel level, its
threads, the CUDA device) are added by :func:`torch_runtime` once a stage has imported it.

:func:`bitwise_expected` compares two such records (a recorded run and this machine) by what decides
the bits of a CPU run (``benchmarks/cpu_bitwise.py`` measured it, see the README): the package
versions, the kernel level torch dispatches to (AVX-512, AVX2 or the default scalar code, unless
``ATEN_CPU_CAPABILITY`` pins it), MKL's code path (the CPU vendor and instruction sets, unless
``MKL_CBWR`` pins it), the number of threads and the device. Everything else (the CPU model name,
the kernel version) is reported but not decisive.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

PREFIX = "env."
#: distributions whose version can change what a stage computes or writes
PACKAGES = ("torch", "deepspeed", "transformers", "numpy", "sentencepiece", "safetensors", "pyarrow", "kedro",
            "kedro-mlflow", "mlflow", "dvc")
#: instruction-set flags of /proc/cpuinfo that the math libraries dispatch on
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
#: environment variables that select code paths or thread counts of the math libraries
SWITCHES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
            "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG", "CUDA_VISIBLE_DEVICES")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def isa_level(flags: set[str]) -> str:
    """The widest vector level torch's CPU kernels can use on these flags: avx512, avx2 or default."""
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags or {"avx512f", "avx512bw", "avx512vl"} <= flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "default"


def _nvidia_gpus() -> str:
    """GPU names from nvidia-smi (without importing torch), or ``none``."""
    if shutil.which("nvidia-smi") is None:
        return "none"
    try:
        p = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    names = [n.strip() for n in p.stdout.splitlines() if n.strip()]
    return ", ".join(names) if p.returncode == 0 and names else "none"


def environment() -> dict[str, str]:
    """This process's software and hardware as ``env.*`` tags (see the module doc)."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    tags = {"python": platform.python_version(), "platform": f"{platform.system()} {platform.release()}",
            "machine": platform.machine(),
            **{dist.replace("-", "_"): _version(dist) for dist in PACKAGES},
            "cpu": cpu.get("model name", platform.processor() or "unknown"),
            "cpu_vendor": cpu.get("vendor_id", "unknown"),
            "cpu_isa": " ".join(f for f in ISA_FLAGS if f in flags) or "unknown",
            "cpu_isa_level": isa_level(flags) if flags else "unknown",
            "cpu_cores": str(_usable_cores()),
            "gpu": _nvidia_gpus(),
            "switches": " ".join(f"{k}={os.environ[k]}" for k in SWITCHES if os.environ.get(k)) or "none"}
    if "torch" in sys.modules:
        tags.update(torch_runtime())
    return {PREFIX + k: v for k, v in tags.items()}


def torch_runtime() -> dict[str, str]:
    """What the imported torch runs with: its CPU kernel level, threads, oneDNN, CUDA device (unprefixed)."""
    import torch

    out = {"torch_cpu_capability": str(torch.backends.cpu.get_cpu_capability()).lower(),
           "torch_threads": str(torch.get_num_threads()),
           "torch_mkldnn": str(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled).lower(),
           "torch_mkl": str(torch.backends.mkl.is_available()).lower()}
    if torch.cuda.is_available():
        out["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        out["cuda"] = str(torch.version.cuda)
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def _switch(record: dict[str, str], name: str) -> str | None:
    for part in record.get(PREFIX + "switches", "").split():
        key, _, value = part.partition("=")
        if key == name:
            return value.upper()
    return None


def kernel_level(record: dict[str, str]) -> str:
    """The level torch's CPU kernels ran at: the recorded one, else the pinned or the CPU's widest."""
    if record.get(PREFIX + "torch_cpu_capability"):
        return record[PREFIX + "torch_cpu_capability"]
    return (_switch(record, "ATEN_CPU_CAPABILITY") or record.get(PREFIX + "cpu_isa_level", "unknown")).lower()


def mkl_path(record: dict[str, str]) -> str:
    """MKL's code path: pinned by MKL_CBWR (the same on every machine that supports it), else the CPU's."""
    pinned = _switch(record, "MKL_CBWR")
    if pinned and pinned.split(",")[0] != "AUTO":
        return f"MKL_CBWR={pinned}"
    return f"{record.get(PREFIX + 'cpu_vendor', 'unknown')} {record.get(PREFIX + 'cpu_isa_level', 'unknown')}"


def threads(record: dict[str, str]) -> str:
    return record.get(PREFIX + "torch_threads") or _switch(record, "OMP_NUM_THREADS") or record.get(
        PREFIX + "cpu_cores", "unknown")


def bitwise_expected(recorded: dict[str, Any], here: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether a rerun here can give the recorded bits, and every decisive difference (none: True).

    A run recorded before environment tags existed gives ``(False, ["no environment recorded"])``."""
    if not any(k.startswith(PREFIX) for k in recorded):
        return False, ["the run recorded no environment (env.* tags)"]
    diffs = []
    for key in ("python", *(d.replace("-", "_") for d in PACKAGES if d not in ("kedro-mlflow", "mlflow", "dvc")),
                "machine", "gpu"):
        a, b = recorded.get(PREFIX + key), here.get(PREFIX + key)
        if a is not None and a != b:
            diffs.append(f"{key}: {a} recorded, {b} here")
    for label, of in (("torch CPU kernels", kernel_level), ("MKL code path", mkl_path), ("threads", threads)):
        a, b = of(recorded), of(here)
        if a != b:
            diffs.append(f"{label}: {a} recorded, {b} here")
    return not diffs, diffs
