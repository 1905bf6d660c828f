#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu_check.sh installs on the GPU machine into the git-ignored folder .whl/.
#
# That machine has no network. Its python3 (3.12) already holds torch 2.11+cu130, transformers 5.17, peft,
# lightning, torchmetrics, accelerate, tensorboard, pyarrow, pandas, matplotlib, tqdm, sympy, xxhash, psutil, jinja2
# and pytest, so only what reprokit (pyproject's dependencies), TRL and the tests import beyond that travels, each
# pinned and without its dependencies (--no-deps), so every missing one is named here:
#
#   bitsandbytes 0.50.2                    NF4 base (reprokit quantization nf4; TRL's BitsAndBytesConfig)
#   trl 1.16.0                             the comparison (bench extra trl>=1.16; needs transformers>=4.56.2 and
#                                          handles transformers < 5.19 itself)
#   datasets 5.2.0, dill 0.4.1,            TRL's dataset (reprokit.data imports datasets lazily)
#   multiprocess 0.70.19
#   math-verify 0.9.0,                     reprokit.rewards (the math reward), imported by the tests
#   latex2sympy2_extended 1.11.0,
#   antlr4-python3-runtime 4.13.2
#   jsonargparse 4.53.0, docstring_parser  reprokit.cli (jsonargparse[signatures]), imported by the tests
#   0.18.0, typeshed_client 2.15.0
#
# The bitsandbytes wheel (43 MB) holds a native library for every CUDA 11.8-13.2, ROCm and XPU build; unless
# --full is given it is repacked with only the CPU and CUDA 13.0 libraries (torch 2.11+cu130 loads
# libbitsandbytes_cuda130.so, which holds sm_75 to sm_120 code, Hopper's sm_90 included), its RECORD updated to
# match: 3.6 MB instead of 43, which keeps the tree that travels to the GPU machine (64 MiB in all) small. For a
# torch built for another CUDA, use --full. At the end the whole set is installed into a temporary folder for Python 3.12 on
# manylinux x86-64, as the GPU machine will, to show that it installs.
#
#   bash benchmarks/fetch_gpu_wheels.sh            # then carry .whl: run(carry=[".whl"], command="bash benchmarks/gpu_check.sh")
#   bash benchmarks/fetch_gpu_wheels.sh --full     # the bitsandbytes wheel as published
set -euo pipefail
cd "$(dirname "$0")/.."

FULL=0
[ "${1:-}" = "--full" ] && FULL=1
WHEELS=(
    bitsandbytes==0.50.2
    trl==1.16.0
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
    math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2
    jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0
)
# The GPU machine's interpreter: CPython 3.12 on x86-64 Linux (bitsandbytes is tagged manylinux_2_24).
TARGET=(--python-version 3.12 --implementation cp --only-binary=:all:
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
PY=${PYTHON:-python3}

rm -rf .whl
mkdir -p .whl
"$PY" -m pip download -q --no-deps "${TARGET[@]}" -d .whl "${WHEELS[@]}"

if [ "$FULL" = 0 ]; then
    "$PY" - .whl/bitsandbytes-*.whl <<'EOF'
"""Repack the bitsandbytes wheel with only its CPU and CUDA 13.0 native libraries; RECORD lists what stays."""
import os
import re
import sys
import zipfile

src = sys.argv[1]
native = re.compile(r"libbitsandbytes_\w+\.so$")
keep = re.compile(r"libbitsandbytes_(cpu|cuda130)\.so$")
drop = lambda name: bool(native.search(name)) and not keep.search(name)  # noqa: E731
tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    kept = [i.filename for i in zin.infolist() if native.search(i.filename) and not drop(i.filename)]
    if not any("cuda130" in name for name in kept):
        sys.exit(f"{src}: no libbitsandbytes_cuda130.so inside; fetch with --full instead")
    for item in zin.infolist():
        if drop(item.filename):
            continue
        data = zin.read(item.filename)
        if item.filename.endswith(".dist-info/RECORD"):
            lines = [line for line in data.decode().splitlines() if not drop(line.split(",")[0])]
            data = ("\n".join(lines) + "\n").encode()
        zout.writestr(item, data)
os.replace(tmp, src)
print(f"repacked {os.path.basename(src)} keeping {', '.join(os.path.basename(k) for k in kept)}")
EOF
fi

ls -l .whl/*.whl | awk '{printf "  %8.1f kB  %s\n", $5 / 1000, $9}'
du -ch .whl/*.whl | tail -1
check=$(mktemp -d)
trap 'rm -rf "$check"' EXIT
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$check" "${TARGET[@]}" .whl/*.whl
echo "the set installs for CPython 3.12 / manylinux x86-64 (checked in a temporary folder)"
