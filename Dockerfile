# An image with aray installed, for deploy/kubernetes/ (docs/kubernetes.md):
#   docker build -t aray:latest .
FROM python:3.12-slim

# tini as PID 1: it passes SIGTERM on to `aray start --block` and reaps the processes a
# node leaves (a container has no init of its own). Debian's current tini.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# aray's session directories go to /tmp/aray-<uid>: the user needs no home to run a node
RUN groupadd --gid 1000 aray \
    && useradd --uid 1000 --gid aray --create-home --shell /usr/sbin/nologin aray

# aray/node and aray/store are links to node/ and store/: all three, with what pip reads
WORKDIR /src
COPY pyproject.toml README.md ./
COPY aray ./aray
COPY node ./node
COPY store ./store
RUN pip install --no-cache-dir . \
    && rm -rf /src

ENV PYTHONUNBUFFERED=1
WORKDIR /home/aray
USER 1000:1000
# the head's port, the dashboard's, a node agent's (deploy/kubernetes/ uses these)
EXPOSE 6379 8265 6380
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["aray", "--help"]
