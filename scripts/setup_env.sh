#!/usr/bin/env bash
# Creates .venv and installs everything SAM-MI needs. Safe to run again: finished steps are skipped.
#   PYTHON=python3.11 bash scripts/setup_env.sh
# Steps: venv -> torch/torchvision -> detectron2 (sal-detectron2 wheel, Python code only) ->
#        requirements.txt -> this package in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi

# The stamp records what was installed; a changed requirements.txt/setup.py/this script re-runs pip.
stamp="$VENV/.sam_mi_setup.$(cat requirements.txt setup.py scripts/setup_env.sh | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi

# pip, without the "Location ... is ignored" noise some machines' pip configuration prints
pip() { "$PY" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v '^WARNING: Location' >&2); }
pip install --upgrade pip installer wheel setuptools
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing torch==2.14.1 torchvision==0.29.1"
  pip install torch==2.14.1 torchvision==0.29.1
fi

# detectron2: not on PyPI under its own name. Its official install is from source (README); offline machines
# use the sal-detectron2 wheel, which carries upstream detectron2's Python code. It is tagged cp310, but the
# Python code runs on 3.11; its compiled _C does not load there and SAM-MI needs none of detectron2's ops.
if ! "$PY" -c "import detectron2" 2>/dev/null; then
  echo "[setup] installing detectron2 from the sal-detectron2==0.7.2 wheel"
  tmp=$(mktemp -d)
  pip download --no-deps --only-binary=:all: --python-version 3.10 sal-detectron2==0.7.2 -d "$tmp"
  "$PY" -m installer "$tmp"/sal_detectron2-*.whl
  rm -rf "$tmp"
fi
# The wheel also installs a top-level `tools` package (detectron2's scripts) that would shadow ours.
site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if [ -f "$site/tools/plain_train_net.py" ]; then
  echo "[setup] removing detectron2's stray top-level 'tools' package from $site"
  rm -rf "$site/tools"
fi

echo "[setup] installing requirements.txt"
pip install -r requirements.txt
# SAM2 (Table 9) is an sdist whose setup.py compiles a CUDA extension in an isolated build env that would
# pull another torch; its Python code needs no extension, so build it against the installed torch instead.
if ! "$PY" -c "import sam2" 2>/dev/null; then
  echo "[setup] installing sam2==1.1.0 (Python only)"
  SAM2_BUILD_CUDA=0 pip install --no-build-isolation --no-deps sam2==1.1.0
fi
# MobileSAM / FastSAM (Table 9) come through ultralytics. --no-deps: its requirements would add opencv-python
# beside opencv-python-headless (two clashing cv2) and packages only its training/logging code uses.
if ! "$PY" -c "import ultralytics" 2>/dev/null; then
  echo "[setup] installing ultralytics==8.4.190 (MobileSAM / FastSAM variants)"
  pip install --no-deps ultralytics==8.4.190 ultralytics-thop==2.2.3
fi
echo "[setup] installing sam_mi (editable)"
pip install --no-deps -e .
"$PY" -c "import detectron2, open_clip, segment_anything, sam_mi; print('[setup] ok: detectron2', detectron2.__version__, '| open_clip', open_clip.__version__)"
rm -f "$VENV"/.sam_mi_setup.*
touch "$stamp"
