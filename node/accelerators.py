"""The GPUs of this machine: how many, which devices, of what type.

At node start, unless ``--num-gpus``/``num_gpus=`` says how many, aray asks ``nvidia-smi``
(when it is on ``PATH``) for the machine's NVIDIA GPUs. ``CUDA_VISIBLE_DEVICES``, when
set, is the set of devices to use, as in Ray: its entries are the node's devices, in its
order, and what a task is given is a subset of them. The GPUs' model becomes a resource
``accelerator_type:MODEL`` (``accelerator_type:H100``), as Ray names it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping

#: how long nvidia-smi may take to answer (a hung driver must not hang the node's start)
DETECT_TIMEOUT = 10.0
#: words of a GPU's name that are not its model
_VENDOR_WORDS = {"NVIDIA", "TESLA", "GEFORCE", "QUADRO"}


def visible_devices(environ: Mapping[str, str] = os.environ) -> list[str] | None:
    """The devices ``CUDA_VISIBLE_DEVICES`` allows (None when it is not set).

    Example:
        >>> visible_devices({"CUDA_VISIBLE_DEVICES": "2,3"}), visible_devices({})
        (['2', '3'], None)
        >>> visible_devices({"CUDA_VISIBLE_DEVICES": ""})
        []
    """
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    devices = [d.strip() for d in value.split(",") if d.strip()]
    # CUDA stops at the first invalid entry; "-1" is the usual way to say "none"
    return devices[:devices.index("-1")] if "-1" in devices else devices


def detect(environ: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """The number of GPUs this node offers by default, and their model ("" if unknown).

    Example:
        >>> detect({"PATH": "", "CUDA_VISIBLE_DEVICES": "0,1"})
        (2, '')
    """
    visible = visible_devices(environ)
    found = _nvidia_smi(environ.get("PATH", os.defpath))
    if found is None:  # no NVIDIA tools: CUDA_VISIBLE_DEVICES alone says how many
        return (len(visible) if visible is not None else 0), ""
    indices = [index for index, _ in found]
    names = dict(found)
    usable = indices if visible is None else [d for d in visible if d in names or not
                                              d.isdigit()]
    models = {model_of(names[d]) for d in usable if d in names}
    return len(usable), (models.pop() if len(models) == 1 else "")


def _nvidia_smi(path: str) -> list[tuple[str, str]] | None:
    exe = shutil.which("nvidia-smi", path=path)
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "--query-gpu=index,name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=DETECT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    rows = []
    for line in proc.stdout.splitlines():
        index, _, name = line.partition(",")
        if index.strip().isdigit():
            rows.append((index.strip(), name.strip()))
    return rows


def model_of(name: str) -> str:
    """The model of a GPU from its name, as Ray's accelerator types name it.

    Example:
        >>> model_of("NVIDIA H100 80GB HBM3"), model_of("Tesla V100-SXM2-16GB")
        ('H100', 'V100')
    """
    words = [w for w in name.split() if w.upper() not in _VENDOR_WORDS]
    return words[0].split("-")[0] if words else ""


def device_ids(count: int, environ: Mapping[str, str] = os.environ) -> list:
    """The devices behind a node's GPU slots 0..count-1: those of CUDA_VISIBLE_DEVICES in
    its order, else 0..count-1 (numbers as ints, as ``aray.get_gpu_ids()`` gives them).

    Example:
        >>> device_ids(2, {"CUDA_VISIBLE_DEVICES": "3,1,2"}), device_ids(2, {})
        ([3, 1], [0, 1])
        >>> device_ids(1, {"CUDA_VISIBLE_DEVICES": "GPU-5f2a"})
        ['GPU-5f2a']
    """
    visible = visible_devices(environ)
    # (more GPUs declared than visible: the declaration wins, numbered from 0)
    ids: list = visible[:count] if visible is not None and len(visible) >= count else \
        list(range(count))
    return [int(d) if isinstance(d, str) and d.isdigit() else d for d in ids]
