# The dssidecar engine on NVIDIA GPUs: torch installed without the CPU pin, so pip takes PyPI's CUDA build
# (it bundles the CUDA runtime; the host's driver comes in through the NVIDIA container toolkit). This is
# the Makefile's install with the CUDA pin (make venv CONSTRAINTS=packaging/docker/constraints-cuda.txt).
# Build from the repository root:
#   docker build -f packaging/docker/sidecar-cuda.Dockerfile -t dsagent/sidecar:0.1.0-cuda .
FROM python:3.11-slim

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN groupadd --system --gid 10001 dsagent \
 && useradd --system --uid 10001 --gid dsagent --home-dir /var/lib/dsagent --shell /usr/sbin/nologin dsagent \
 && install -d -o dsagent -g dsagent -m 0750 /var/lib/dsagent /models

WORKDIR /src
COPY pyproject.toml README.md ./
COPY packaging/docker/constraints-cuda.txt ./constraints-cuda.txt
COPY agent ./agent
COPY sidecar ./sidecar
# the default rule packs, installed as data files (share/dsagent/rules)
COPY rules ./rules
RUN python -m pip install -c constraints-cuda.txt '.[sidecar]' && rm -rf /src

WORKDIR /var/lib/dsagent
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["dssidecar"]
CMD ["serve", "--model", "/models/model", "--host", "0.0.0.0", "--port", "8000", "--device", "cuda"]
