# syntax=docker/dockerfile:1
# Baton: `docker build -t baton .`, then see docs/deploy.md and docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 baton \
    && useradd --system --uid 10001 --gid baton --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin baton \
    && python -m venv /opt/venv

WORKDIR /opt/baton

# The dependencies first, in their own layer: a change to Baton's code does not
# reinstall them. Every one of them ships wheels, so no compiler is needed.
COPY pyproject.toml README.md ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# `baton db upgrade` finds Alembic's scripts beside the package (migrations/ is
# not package data), so the source tree stays here and is installed in place,
# the layout `make` and the test suite use. Compiled now: the container's
# file system can then be read-only.
COPY alembic.ini ./
COPY migrations ./migrations
COPY app ./app
RUN pip install --no-deps --editable . \
    && python -m compileall -q app migrations

USER 10001:10001
EXPOSE 8000

# /healthz answers 200 while the process serves; no curl in a slim image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

ENTRYPOINT ["baton"]
CMD ["serve", "--host", "0.0.0.0"]
