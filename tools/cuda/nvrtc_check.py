#!/usr/bin/env python3
"""Compiles umup's run-time CUDA kernels (every `*.cu` under umup-runtime/src/ops/) with NVRTC,
as the `Cuda` backend does on first use, and checks that each `extern "C" __global__` function is
in the PTX. Needs only libnvrtc (no GPU, no driver, no Rust toolchain):

    python3 tools/cuda/nvrtc_check.py                # finds libnvrtc (see below)
    NVRTC_LIB=/path/libnvrtc.so.13 python3 tools/cuda/nvrtc_check.py

libnvrtc is looked up in $NVRTC_LIB, python's `nvidia` wheels (a torch venv, or
`pip install nvidia-cuda-nvrtc`), $CUDA_ROOT/lib64 and /usr/local/cuda/lib64. Exit status 1 if a
file fails to compile or a kernel is missing from its PTX.
"""
import ctypes
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The architectures compiled for: NVRTC's default (what cudarc::nvrtc::compile_ptx uses) and
# Hopper (the lent GPUs).
ARCHS = [None, "compute_90"]


def find_nvrtc():
    cands = [os.environ.get("NVRTC_LIB", "")]
    try:
        import nvidia  # noqa: F401  (the CUDA wheels' namespace package)

        for base in nvidia.__path__:
            cands += sorted(glob.glob(os.path.join(base, "*", "lib", "libnvrtc.so*")))
    except ImportError:
        pass
    for root in [os.environ.get("CUDA_ROOT", ""), "/usr/local/cuda"]:
        if root:
            cands += sorted(glob.glob(os.path.join(root, "lib64", "libnvrtc.so*")))
    for c in cands:
        if c and os.path.exists(c) and "builtins" not in c:
            return c
    sys.exit("libnvrtc not found: set NVRTC_LIB (see the module docs)")


def compile_file(lib, path, arch):
    src = open(path, "rb").read()
    prog = ctypes.c_void_p()
    check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), src, path.encode(), 0, None, None))
    opts = [f"--gpu-architecture={arch}".encode()] if arch else []
    arr = (ctypes.c_char_p * len(opts))(*opts)
    res = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    ptx = b""
    if res == 0:
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        check(lib, lib.nvrtcGetPTX(prog, buf))
        ptx = buf.value
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return res, log.value.decode(errors="replace"), ptx.decode(errors="replace")


def check(lib, res):
    if res != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        sys.exit(f"nvrtc error {res}: {lib.nvrtcGetErrorString(res).decode()}")


def main():
    path = find_nvrtc()
    lib = ctypes.CDLL(path)
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    print(f"NVRTC {major.value}.{minor.value} ({path})")
    files = sorted(glob.glob(os.path.join(ROOT, "umup-runtime/src/ops/**/*.cu"), recursive=True))
    if not files:
        sys.exit("no kernel sources found")
    ok = True
    for f in files:
        names = re.findall(r'extern\s+"C"\s+__global__\s+void\s+(\w+)', open(f).read())
        for arch in ARCHS:
            res, log, ptx = compile_file(lib, f, arch)
            missing = [n for n in names if f".entry {n}(" not in ptx]
            status = "ok" if res == 0 and not missing else "FAILED"
            ok &= status == "ok"
            rel = os.path.relpath(f, ROOT)
            print(f"{status:6} {rel} [{arch or 'default arch'}]: {len(names)} kernels")
            if res != 0 or log.strip():
                print(log.strip())
            if missing:
                print(f"       missing from the PTX: {', '.join(missing)}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
