# The dssidecar engine on CPU: torch pinned to its CPU build through constraints/cpu.txt, as `make venv`
# installs it. Build from the repository root:
#   docker build -f packaging/docker/sidecar-cpu.Dockerfile -t dsagent/sidecar:0.1.0 .
FROM python:3.11-slim

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 dsagent \
 && useradd --system --uid 10001 --gid dsagent --home-dir /var/lib/dsagent --shell /usr/sbin/nologin dsagent \
 && install -d -o dsagent -g dsagent -m 0750 /var/lib/dsagent /models

WORKDIR /src
COPY pyproject.toml README.md ./
COPY constraints ./constraints
COPY agent ./agent
COPY sidecar ./sidecar
# the default rule packs, installed as data files (share/dsagent/rules)
COPY rules ./rules
# The Makefile's install command (make venv): -c constraints/cpu.txt '.[sidecar]'
RUN python -m pip install -c constraints/cpu.txt '.[sidecar]' && rm -rf /src

WORKDIR /var/lib/dsagent
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["dssidecar"]
CMD ["serve", "--model", "/models/model", "--host", "0.0.0.0", "--port", "8000"]
