# The agent alone: no torch, no engine. It observes an engine over HTTP (engine.kind external) or
# supervises vLLM. Build from the repository root:
#   docker build -f packaging/docker/agent.Dockerfile -t dsagent/agent:0.1.0 .
FROM python:3.11-slim

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 dsagent \
 && useradd --system --uid 10001 --gid dsagent --home-dir /var/lib/dsagent --shell /usr/sbin/nologin dsagent \
 && install -d -o dsagent -g dsagent -m 0750 /var/lib/dsagent /etc/dsagent /etc/dsagent/rules

WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY sidecar ./sidecar
# the default rule packs, installed as data files (share/dsagent/rules)
COPY rules ./rules
# The Makefile's install command without the extras: the agent's own dependencies only.
RUN python -m pip install . && rm -rf /src

WORKDIR /var/lib/dsagent
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["dsagent"]
CMD ["run", "--data-dir", "/var/lib/dsagent"]
