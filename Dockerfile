# proxysync: one image for every process (listener, worker, Flower, Messenger stand-in); docker-compose.yml picks
# the command. Checked here with `docker-compose config -q` only: no container engine runs in this repository's CI.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed, unprivileged uid/gid so volumes (the listener's spool) have predictable ownership.
RUN groupadd --system --gid 10001 proxysync \
    && useradd --system --uid 10001 --gid proxysync --home-dir /app --shell /usr/sbin/nologin proxysync \
    && mkdir -p /var/lib/proxysync \
    && chown proxysync:proxysync /var/lib/proxysync

WORKDIR /app
COPY pyproject.toml README.md ./
COPY celeryconfig.py ./
COPY proxysync/ proxysync/
COPY cache/ cache/
COPY tasks/ tasks/
COPY listener/ listener/
COPY messenger/ messenger/
RUN pip install --no-compile .

USER proxysync:proxysync
ENV LISTENER_SPOOL_PATH=/var/lib/proxysync/spool.sqlite
EXPOSE 8081 5555 8090 9808
CMD ["proxysync", "--help"]
