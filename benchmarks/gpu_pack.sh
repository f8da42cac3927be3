#!/usr/bin/env bash
# Packs .whl/ (in .gitignore; name it in the device call's carry) for a GPU machine that reaches no package registry: the wheels its image lacks
# (Python 3.12, x86-64) and, for the quick start, elpv's labels with its decoded 72 px and 64 px caches (the
# elpv-dataset wheel alone is over the 64 MiB a device call carries; about 50 MB in all). Run once, here:
#     bash benchmarks/gpu_pack.sh
# then on the device (with .whl carried):  python3 benchmarks/gpu_check.py --archive "$OUT/gpu_results.tar.gz"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    kornia==0.9.0 kornia_rs==0.2.0 faiss-cpu==1.15.1 lightly==1.6.0 hydra-core==1.3.8 omegaconf==2.3.1
"$PY" -m pip download -q --no-deps -d .whl antlr4-python3-runtime==4.9.3  # a source archive only (pure Python)
VISIONSSL_HOME=.whl/home PYTHONPATH=$PWD "$PY" - <<'EOF'
import shutil
from pathlib import Path

import elpv_dataset

import visionssl as vs

stub = Path(".whl/elpv_stub/elpv_dataset")
(stub / "data").mkdir(parents=True)
shutil.copy(Path(elpv_dataset.__file__).parent / "data" / "labels.csv", stub / "data" / "labels.csv")
(stub / "__init__.py").write_text('"""elpv labels only: the images come from the decoded caches in $VISIONSSL_HOME."""\n')
for size in (72, 64):  # the quick start's data.image_size, and its views' size
    vs.data.load_dataset("elpv", "train", image_size=size)
EOF
du -sh .whl
