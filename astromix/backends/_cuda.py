"""Which CuPy wheel suits this machine's NVIDIA driver (no CuPy needed).

CuPy publishes one binary wheel per CUDA major version (``cupy-cuda12x``,
``cupy-cuda13x``, ...).  A driver runs CUDA runtimes up to the version it
reports, so the newest wheel not above that version is the one to install.
Used by ``astromix backends`` (to say what to install when CuPy is missing) and
by ``tox -e test-cupy`` (to install it).
"""

import re
import shutil
import subprocess

__all__ = ["driver_cuda_version", "cupy_requirement", "install_hint", "GPU_EXTRAS"]

#: pip extra of astromix per CUDA major version (``pip install "astromix[gpu]"``).
GPU_EXTRAS = {12: "gpu", 13: "gpu-cuda13"}

_VERSION = re.compile(r"CUDA Version\s*:\s*(\d+)\.(\d+)")


def driver_cuda_version(smi_output=None):
    """Highest CUDA version the NVIDIA driver supports, from ``nvidia-smi``.

    Parameters
    ----------
    smi_output : str, optional
        The text ``nvidia-smi`` prints (its header has ``CUDA Version: 13.0``);
        by default ``nvidia-smi`` is run (5 s time limit).

    Returns
    -------
    (int, int) or None
        ``(major, minor)``, or None when ``nvidia-smi`` is absent, fails, or
        prints no CUDA version.
    """
    if smi_output is None:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return None
        try:
            smi_output = subprocess.run([exe], capture_output=True, text=True, timeout=5,
                                        check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return None
    match = _VERSION.search(smi_output or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def cupy_requirement(smi_output=None):
    """The CuPy wheel for this machine's driver: ``"cupy-cuda13x"``, ``"cupy-cuda12x"``...

    Parameters
    ----------
    smi_output : str, optional
        As for :func:`driver_cuda_version`.

    Returns
    -------
    str or None
        ``cupy-cuda<major>x`` for the driver's CUDA major version (11 for an
        older driver, whose wheels only CuPy 13 and earlier publish), or None
        when no NVIDIA driver is found.
    """
    version = driver_cuda_version(smi_output)
    return None if version is None else _wheel(version)


def _wheel(version):
    # the CuPy wheel for a driver's (major, minor) CUDA version
    return f"cupy-cuda{max(version[0], 11)}x"


def install_hint(smi_output=None):
    """What to install for the ``"cupy"`` backend on this machine, in words.

    Parameters
    ----------
    smi_output : str, optional
        As for :func:`driver_cuda_version`.

    Returns
    -------
    str
        ``the NVIDIA driver supports CUDA 13.0: pip install "astromix[gpu-cuda13]"``
        (the astromix extra of :data:`GPU_EXTRAS`, else the CuPy wheel), or
        ``no NVIDIA driver found (nvidia-smi)``.
    """
    version = driver_cuda_version(smi_output)
    if version is None:
        return "no NVIDIA driver found (nvidia-smi)"
    extra = GPU_EXTRAS.get(version[0])
    how = f'pip install "astromix[{extra}]"' if extra else f"pip install {_wheel(version)}"
    return f"the NVIDIA driver supports CUDA {version[0]}.{version[1]}: {how}"
