# batch-ingest as a container image, for the engines in deploy/ (Kubernetes, AWS Batch).
#
#   docker build -t batch-ingest:latest .
#   docker run --rm -e SMARTSTREAM_MERCHANT_ID -e SMARTSTREAM_API_KEY -e SMARTSTREAM_TOKEN \
#       -v "$PWD/runs:/runs" batch-ingest:latest run /runs/manifest.csv --report-dir /runs/migration
#
# The entry point is the `batch-ingest` command, so what follows the image name (Kubernetes `args:`,
# AWS Batch `command`) starts with the subcommand: `run ...`, `collect ...`, `report ...`.
# Everything is installed from uv.lock (`--locked`: the build fails if the lock is out of date), without
# the dev group, and the project as a wheel (`--no-editable`), so the final image holds no source tree.

ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

FROM python:3.11-slim AS build
COPY --from=uv /uv /uvx /bin/
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/opt/batch-ingest
WORKDIR /src
# The dependencies first, in their own layer: it is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --no-install-project
# Then the project itself (hatchling reads README.md for the package's metadata).
COPY README.md ./
COPY batch_ingest ./batch_ingest
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable

FROM python:3.11-slim
# The same base as the build stage, so the environment's interpreter path (/usr/local/bin/python3.11) exists.
RUN groupadd --system --gid 10001 ingest \
    && useradd --system --uid 10001 --gid ingest --home-dir /home/ingest --create-home --shell /usr/sbin/nologin ingest \
    && mkdir -p /runs \
    && chown ingest:ingest /runs
COPY --from=build /opt/batch-ingest /opt/batch-ingest
ENV PATH=/opt/batch-ingest/bin:$PATH \
    PYTHONUNBUFFERED=1
# The run root: every run folder, shard folder and report lives under it; mount a persistent (for
# shards on several machines, shared) volume here, with working POSIX advisory locks (flock: NFSv4,
# EFS), since each run folder's journal is SQLite and its run.lock keeps one process per folder.
# Relative --report-dir paths land here too.
VOLUME ["/runs"]
WORKDIR /runs
# Not root. Kubernetes manifests in deploy/ run the pod as this uid (runAsUser) with fsGroup 10001, so
# the volume is writable.
USER 10001:10001
ENTRYPOINT ["batch-ingest"]
CMD ["--help"]
