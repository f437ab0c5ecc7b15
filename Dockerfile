# The adapt3d predictor as a CVPR 2025 interactive-segmentation challenge submission.
#
#   mkdir -p model && cp sam_med3d_turbo.pth model/core.pth      # your core (and adapters: model/mr, ...)
#   docker build -t teamname:latest .
#   docker save teamname:latest | gzip -c > teamname.tar.gz
#
# The challenge runs: docker container run --gpus "device=0" -m 32G --rm \
#   -v $PWD/inputs/:/workspace/inputs/ -v $PWD/outputs/:/workspace/outputs/ teamname:latest /bin/bash -c "sh predict.sh"
FROM pytorch/pytorch:2.4.1-cuda12.1-cudnn9-runtime

WORKDIR /workspace
COPY pyproject.toml README.md ./
COPY adapt3d ./adapt3d
RUN pip install --no-cache-dir . && rm -rf /root/.cache
COPY model ./model
COPY predict.sh ./predict.sh

# Adapters are routed by the file-name prefix of each input (MR_*.npz → the MR adapter).
ENV ADAPT3D_CORE=/workspace/model/core.pth \
    ADAPT3D_ADAPTERS="" \
    ADAPT3D_SPACING=1.5
