#!/usr/bin/env bash
# Wheels the lent GPU machine lacks (its image has Python 3.12 with JAX/CUDA, flax, optax, orbax,
# numpy, scipy, h5py, pandas, matplotlib, absl-py, protobuf, psutil, pyarrow, requests, tqdm,
# wrapt, etils, cloudpickle, but not grain or tensorflow-datasets), fetched here into .whl/ at
# the repository root (git-ignored), to be carried with `run(carry=[".whl"])`.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY=${PY:-python3}
for package in grain==0.2.18 array-record==0.8.6 tensorflow-datasets==4.9.10 \
    tensorflow-metadata==1.21.0 dm-tree immutabledict simple-parsing docstring-parser portpicker \
    termcolor toml importlib-resources ml-collections tensorboardX wfdb googleapis-common-protos; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform any -d .whl "$package"
done
# promise (a tfds requirement) ships as a pure-Python sdist only: build its wheel here.
"$PY" -m pip wheel -q --no-deps -w .whl promise
du -sh .whl
