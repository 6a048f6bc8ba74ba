# The swarmkeeper image: `swarmkeeper run` as a non-root user, with git, ssh
# and gpg for the git source. deploy/stack.yml runs it on every manager;
# docs/install.md ("From the container image") is the operator's guide.
#
#   docker build -t swarmkeeper:dev .
#
# Build arguments:
#   BASE             the Python 3.11 image both stages start from (the project
#                    supports 3.11 and later). The default is the official
#                    Debian-based image; where no registry is reachable,
#                    scripts/base-image.sh makes an equivalent from Debian's
#                    packages and prints its tag for --build-arg BASE=...
#   PIP_INDEX_URL    a package index other than PyPI (a mirror)
#   PIP_NO_INDEX, PIP_FIND_LINKS
#                    builds without any index: put the wheels in ./wheelhouse
#                    (the only extra folder .dockerignore lets through), then
#                    --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/src/wheelhouse
#                    (tests/test_deploy_image.py builds this way)
#
# No "# syntax=" line: it makes BuildKit pull a frontend image, which fails
# without a registry. The file works with the legacy builder and BuildKit.

ARG BASE=python:3.11-slim

# --- build: a virtualenv holding swarmkeeper and its pinned dependencies ---
FROM ${BASE} AS build
ARG PIP_INDEX_URL
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/swarmkeeper
WORKDIR /src
# .dockerignore lets only the package's sources (and ./wheelhouse) through.
COPY . .
# constraints.txt pins every dependency to what the test suite passed with.
# pip and setuptools leave the virtualenv afterwards: nothing installs
# packages at run time, and the final stage copies only this folder.
RUN /opt/swarmkeeper/bin/pip install --quiet -c constraints.txt . \
    && /opt/swarmkeeper/bin/python -m pip uninstall --quiet --yes setuptools pip \
    && /opt/swarmkeeper/bin/swarmkeeper --version

# --- final: the base, the tools the git source runs, the virtualenv ---
FROM ${BASE}

# git (fetch, verify-commit, export), the OpenSSH client (ssh URLs, and
# ssh-keygen for ssh-signed commits) and gpg (gpg-signed commits), from the
# distribution when the base lacks them: python:3.11-slim is Debian and has
# none of them; the base scripts/base-image.sh makes has all three already.
RUN set -eu; \
    for tool in git ssh ssh-keygen gpg; do \
        command -v "$tool" >/dev/null 2>&1 || missing="${missing:-} $tool"; \
    done; \
    if [ -n "${missing:-}" ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            git openssh-client gpg; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    git --version; ssh -V; gpg --version | head -n 1

# The daemon's user, uid and gid 10001, written straight into /etc/passwd and
# /etc/group because a minimal base may have no useradd. Its home is the
# cache volume, where ssh keeps known_hosts. The docker socket's group is
# given at run time (deploy/stack.yml's `user:`, or `docker run --group-add`),
# since its number differs from host to host.
RUN echo 'swarmkeeper:x:10001:10001:swarmkeeper:/var/lib/swarmkeeper:/usr/sbin/nologin' >>/etc/passwd \
    && echo 'swarmkeeper:x:10001:' >>/etc/group \
    && mkdir -p /var/lib/swarmkeeper /etc/swarmkeeper \
    && chown 10001:10001 /var/lib/swarmkeeper \
    && chmod 0750 /var/lib/swarmkeeper

COPY --from=build /opt/swarmkeeper /opt/swarmkeeper

# Inside the container the metrics endpoint (and /healthz, /readyz) listens on
# every interface of the container's own network namespace: nothing outside
# reaches it unless the operator publishes the port or attaches a network,
# which is their choice (deploy/stack.yml publishes nothing by default).
# Loopback alone would make the port unreachable by any scraper. Logs are
# JSON lines; the git cache (and with git the desired state, cache/state)
# lives on the volume.
ENV PATH=/opt/swarmkeeper/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/swarmkeeper \
    SWARMKEEPER_METRICS_ADDR=0.0.0.0:9488 \
    SWARMKEEPER_CACHE_DIR=/var/lib/swarmkeeper \
    SWARMKEEPER_LOG_FORMAT=json
VOLUME ["/var/lib/swarmkeeper"]
EXPOSE 9488

USER 10001:10001

# /healthz answers 200 while the daemon's loop beats (docs/design.md). The
# base may have no curl or wget: Python's urllib does the request, on the
# port of SWARMKEEPER_METRICS_ADDR, through loopback (which works as long as
# the address is 0.0.0.0 or 127.0.0.1, the only sensible choices here).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; port = os.environ.get('SWARMKEEPER_METRICS_ADDR', ':9488').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

ENTRYPOINT ["swarmkeeper"]
CMD ["run"]
