"""Which device computes the edited rows: cpu (numpy; torch is not even imported), auto (cuda when
a GPU and a CUDA build of torch are present) or an explicit cuda device that must be usable."""

from __future__ import annotations

from pathlib import Path

from swe_cli.errors import SweError


def resolve_device(device: str) -> str:
    """The device rows are computed on. cpu: numpy, torch is not even imported; auto: cuda when
    a GPU and a CUDA build of torch are present, else cpu; cuda, cuda:N: must be usable."""
    if device == "cpu":
        return device
    if device in ("", "auto"):
        if not _gpu_present():
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SweError(
            f"--device {device} asked for, but torch sees no CUDA device",
            hint="use --device cpu (row edits are small) or install a CUDA build of torch",
        )
    try:
        torch.empty(1, device=device)
    except (RuntimeError, ValueError) as error:
        raise SweError(
            f"device '{device}' is not usable ({error})", hint="use cpu, cuda or cuda:N"
        ) from None
    return device


def _gpu_present() -> bool:
    """Cheap check before importing torch: an NVIDIA driver or device node, or ROCm's."""
    markers = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")
    return any(Path(marker).exists() for marker in markers)
