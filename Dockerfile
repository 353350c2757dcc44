# syntax=docker/dockerfile:1
#
# One image for every Mall Circle service. The container runs `python -m <CMD...>`, so the
# Deployment picks the service and its role: `["member", "serve"]`, `["points", "relay"]`,
# `["gateway", "serve"]`, `["coupons", "migrate"]`, ... One image because the services share
# one lock, the kit/eventbus/contracts libraries and one release cadence: one build, one scan,
# one tag to roll out and roll back, and no skew between services built at different times.
#
#   docker build -t registry.example.com/mall-circle:$(git rev-parse --short HEAD) .
#   docker run --rm registry.example.com/mall-circle:TAG member --help

################################################################################
# builder: a virtualenv at /opt/venv from uv.lock (no dev group, no tests, non-editable)
################################################################################
# Pin both stages to one digest at release (python:3.11-slim@sha256:...): the venv's
# interpreter symlink must point at the same Python in both.
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/opt/venv

RUN pip install --no-cache-dir uv==0.13.8

WORKDIR /src

# 1. Third-party dependencies only: this layer changes with uv.lock, not with our code.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --no-install-workspace \
        --package gateway --package member --package points --package parking --package coupons

# 2. Our packages, installed as wheels (the venv owns copies; nothing points back at /src).
COPY libs/ libs/
COPY services/ services/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable \
        --package gateway --package member --package points --package parking --package coupons

################################################################################
# runtime: the slim interpreter, the venv, a numeric non-root user. No pip, no uv, no compiler.
################################################################################
FROM python:3.11-slim

# The base image's pip/setuptools/wheel are not needed at run time (the venv has none).
RUN python -m pip uninstall --yes pip setuptools wheel \
    && groupadd --system --gid 10001 mall \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mall

# Owned by root, read-only for the service user.
COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOG_FORMAT=json \
    GRPC_HOST=0.0.0.0 \
    HTTP_HOST=0.0.0.0

USER 10001:10001
WORKDIR /tmp

# Exec form: python is PID 1 and receives SIGTERM itself (kit.lifecycle turns it into
# health NOT_SERVING -> drain -> exit within SHUTDOWN_GRACE_S).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m"]
CMD ["gateway", "serve"]
