# cxrlib in a container: the image runs any `cxr` command (docs/cloud.md).
#
#   docker build -t cxrlib:cpu .                               # CPU (the default)
#   docker build --build-arg VARIANT=cuda -t cxrlib:cuda .     # NVIDIA GPUs
#   docker run --rm cxrlib:cpu --help
#
# VARIANT=cpu  torch from the PyTorch CPU wheel index (~200 MB, no CUDA libraries).
# VARIANT=cuda torch from PyPI, whose Linux wheel is the CUDA 13.0 build: it brings its
#              own CUDA runtime, cuDNN and NCCL as pip packages, so the base stays
#              python:3.11-slim (no nvidia/cuda base image); the host needs only an NVIDIA
#              driver >= 580 and the NVIDIA container toolkit (`docker run --gpus all`).
#
# Secrets: none are baked in. HF_TOKEN (Hugging Face hub) is read from the environment
# at run time only (`docker run -e HF_TOKEN ...`, or a secret of the cloud job): never
# set it with ARG or ENV here, build args are kept in the image history.
#
# Data and outputs: mounted volumes (paths), or fsspec URLs for a manifest and its
# image/mask cells (gs://, s3://: gcsfs and s3fs come with the `cloud` extra).
# Run folders, --out and caches are local paths: mount a bucket (Cloud Storage FUSE,
# /gcs/BUCKET on Vertex AI) to keep them.
#
# This file is checked by hadolint (`make lint`) and tests/test_dockerfile.py; no image
# was built where it was written (no container engine there).

FROM python:3.11-slim

# cpu or cuda (see above)
ARG VARIANT=cpu
# the torch pin of the Makefile and pyproject.toml (tests/test_dockerfile.py keeps them equal)
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# torch first and pinned, as the Makefile does: a looser spec pulls another build
RUN case "${VARIANT}" in \
      cpu)  pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu ;; \
      cuda) pip install "torch==${TORCH_VERSION}" ;; \
      *)    echo "VARIANT must be cpu or cuda (got '${VARIANT}')" >&2; exit 1 ;; \
    esac

# the package itself, not editable, with the runtime extras only: dicom (DICOM input
# of cxr report) and cloud (gs://, s3:// manifests); not dev, lab, nor meteor (Java)
WORKDIR /opt/cxrlib
COPY pyproject.toml README.md ./
COPY cxrlib ./cxrlib
# DL3013 (pin versions in pip): "." is this checkout, and every dependency and extra of
# it is pinned exactly in pyproject.toml (tests/test_environment.py)
# hadolint ignore=DL3013
RUN pip install ".[dicom,cloud]" \
    && python -c "import torch, cxrlib; print('torch', torch.__version__)"
# the workbook's notebooks: `cxr workbook run --notebooks /opt/cxrlib/notebooks ...`
COPY notebooks ./notebooks

# a non-root user (numeric in USER, so that hosts and Kubernetes' runAsNonRoot can check
# it without the image's /etc/passwd); /workspace is where relative paths (cache/, runs/) land
RUN useradd --create-home --uid 1000 cxr \
    && mkdir -p /workspace \
    && chown cxr:cxr /workspace
USER 1000:1000
WORKDIR /workspace
ENV CXR_CACHE=/workspace/cache \
    HF_HOME=/workspace/hf-cache

ENTRYPOINT ["cxr"]
CMD ["--help"]
