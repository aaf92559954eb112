"""Building CUDA modules with nvcc, on machines with or without a GPU.

TVM 0.27's CUDA codegen needs two things that a build machine without a GPU lacks:

* TVM's CUDA runtime library (``libtvm_runtime_cuda.so``). Without it, ``tvm.compile`` keeps only
  the CUDA *source* in a fallback module, which a GPU machine cannot load. The library links the
  driver (``libcuda.so.1``), which only a machine with a GPU has, so where the driver is missing
  :func:`enable_cuda_codegen` loads a driver stub first (the stub CUDA toolkits ship for linking,
  built here from ``data/cuda_driver_stub.c`` because pip's CUDA packages do not ship one): every
  driver call in it fails with "no device", and none is made while compiling.
* A compiler callback. TVM's default (NVRTC) needs the ``cuda-bindings`` package and a target
  in scope; :func:`enable_cuda_codegen` registers one that runs ``nvcc`` to a fatbin for the
  target's ``arch``, so the module that ``export_library`` writes runs on that GPU with nothing
  but TVM's runtime there.

:func:`compile_cuda_module` and :func:`cubin` are what the benchmark and the CI tests use.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import tvm
import tvm_ffi

from .errors import ScalpelError

_STUB_SOURCE = Path(__file__).parent / "data" / "cuda_driver_stub.c"
_state = {"enabled": False, "target": None}


def nvcc_path() -> str:
    """The nvcc that builds CUDA modules: $CUDA_HOME/bin/nvcc; else the one the `cuda` extra
    installs from PyPI (pinned, so builds do not depend on the machine); else the one on PATH."""
    pip_toolkit = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cu13" / "bin" / "nvcc"
    candidates = [os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc") if "CUDA_HOME" in os.environ
                  else None, str(pip_toolkit), shutil.which("nvcc")]
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    raise ScalpelError(
        "nvcc was not found; CUDA modules are compiled with it. Install it with "
        "`pip install scalpel-tvm[cuda]` (the CUDA 13 compiler from PyPI), or put a CUDA "
        "toolkit's nvcc on PATH or set CUDA_HOME")


def _driver_stub() -> Path:
    """Build (once per user) the no-device libcuda.so.1 stub from its C source."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scalpel-tvm"
    stub = cache / "libcuda.so.1"
    if not stub.exists() or stub.stat().st_mtime < _STUB_SOURCE.stat().st_mtime:
        cache.mkdir(parents=True, exist_ok=True)
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise ScalpelError("building CUDA modules without a GPU driver needs a C compiler (cc)")
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            built = Path(tmp) / "libcuda.so.1"
            subprocess.run([compiler, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o",
                            str(built), str(_STUB_SOURCE)], check=True, capture_output=True)
            built.replace(stub)
    return stub


def load_cuda_runtime() -> None:
    """Load TVM's CUDA runtime (libtvm_runtime_cuda.so, which `import tvm` does not load), with the
    driver stub where no driver is installed: building needs it, and so does loading a built module."""
    if tvm.runtime.enabled("cuda"):
        return
    library = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    try:
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    except OSError:
        # The driver is missing: the stub's soname satisfies the runtime's dependency on it.
        ctypes.CDLL(str(_driver_stub()), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    if not tvm.runtime.enabled("cuda"):
        raise ScalpelError(f"TVM's CUDA runtime ({library}) did not register; cannot build CUDA")


def enable_cuda_codegen(target: tvm.target.Target) -> None:
    """Make ``tvm.compile(..., target)`` produce a loadable CUDA binary for `target`'s arch."""
    from tvm.support import nvcc  # late: only CUDA builds need it

    load_cuda_runtime()
    _state["target"] = target  # its arch: TVM fills one in, TargetSpec refuses a missing one
    # TVM runs "nvcc" from PATH: put the chosen one first.
    nvcc_dir = os.path.dirname(nvcc_path())
    if shutil.which("nvcc") != os.path.join(nvcc_dir, "nvcc"):
        os.environ["PATH"] = nvcc_dir + os.pathsep + os.environ.get("PATH", "")
    if _state["enabled"]:
        return

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _compile(code, *_unused):
        # TVM does not put the target in scope here, and nvcc.compile_cuda reads the arch from it.
        with _state["target"]:
            return nvcc.compile_cuda(code, target_format="fatbin", compiler="nvcc")

    _state["enabled"] = True


def compile_cuda_module(mod: tvm.IRModule, target) -> tvm.runtime.Executable:
    """`tvm.compile` for a CUDA target, with the codegen enabled and the target in scope."""
    target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
    enable_cuda_codegen(target)
    with target:
        return tvm.compile(mod, target=target)


def cuda_source(executable) -> str:
    """The CUDA C source of a compiled module's device code."""
    for module in _all_modules(executable.mod):
        if module.kind == "cuda":
            return module.inspect_source("cuda")
    raise ScalpelError("the module has no CUDA device code")


def _all_modules(module):
    yield module
    for imported in module.imports:
        yield from _all_modules(imported)


def cubin(source: str, arch: str, out_dir: str | os.PathLike) -> Path:
    """Compile CUDA source to a cubin with nvcc (what CI checks without a GPU)."""
    out_dir = Path(out_dir)
    src = out_dir / "kernels.cu"
    src.write_text(source)
    out = out_dir / "kernels.cubin"
    result = subprocess.run([nvcc_path(), "--cubin", "-O3", f"-arch={arch}", "-o", str(out), str(src)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise ScalpelError(f"nvcc failed on the generated CUDA source:\n{result.stderr[-2000:]}")
    return out
