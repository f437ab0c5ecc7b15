#!/bin/sh
# CVPR 2025 "Foundation Models for Interactive 3D Biomedical Image Segmentation": the container's
# entry point. The challenge's evaluation runs `sh predict.sh` once per interaction step (box, then
# 5 clicks) with /workspace/inputs/<case>.npz mounted; every <case>.npz gets /workspace/outputs/<case>.npz
# holding `segs`. Settings come from the image's environment (see Dockerfile):
#   ADAPT3D_CORE      core checkpoint (default /workspace/model/core.pth)
#   ADAPT3D_ADAPTERS  space-separated MOD=DIR pairs, e.g. "MR=/workspace/model/mr US=/workspace/model/us"
#   ADAPT3D_SPACING   the core's working spacing in mm (SAM-Med3D: 1.5)
#   ADAPT3D_INPUTS / ADAPT3D_OUTPUTS  the folders (default: the challenge's mounts), PYTHON the interpreter
set -e
CORE="${ADAPT3D_CORE:-/workspace/model/core.pth}"
SPACING="${ADAPT3D_SPACING:-1.5}"
set -- --core "$CORE" --spacing "$SPACING" --device auto \
    --in "${ADAPT3D_INPUTS:-/workspace/inputs}" --out "${ADAPT3D_OUTPUTS:-/workspace/outputs}"
for pair in ${ADAPT3D_ADAPTERS:-}; do
    set -- "$@" --adapter "$pair"
done
exec "${PYTHON:-python}" -m adapt3d predict-npz "$@"
