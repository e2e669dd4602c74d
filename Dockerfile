# One image for every Berth process; the entrypoint picks which: web | auth | worker | migrate | nginx
# (deploy/entrypoint.sh). Run it as in docker-compose.yml, deploy/kubernetes/ or deploy/ecs/.
#   docker build -t berth .
#   docker build --build-arg BASE=berth-local/python:3.11 -t berth .    (no registry: see
#                                                                        deploy/local-images/build.sh)
# BASE is any Debian bookworm image with Python 3.11, venv and apt.
ARG BASE=python:3.11-slim-bookworm

# -- requirements: the dependencies, listed from setup.cfg ---------------------------------------
FROM ${BASE} AS requirements
# Extras installed with the core dependencies: the worker's docker and ecs backends.
ARG EXTRAS="docker ecs"
COPY setup.cfg deploy/requirements.py /tmp/berth/
RUN cd /tmp/berth && python requirements.py $EXTRAS >requirements.txt

# -- build: a virtualenv with the dependencies (and whatever compiling them would need) ----------
# Only the list comes in, so a change to the code, or to setup.cfg that leaves the list as it
# is, reuses this stage.
FROM ${BASE} AS build
COPY --from=requirements /tmp/berth/requirements.txt /tmp/berth/
RUN python -m venv /opt/berth \
    && /opt/berth/bin/pip install --no-cache-dir -q "setuptools>=70.1" -r /tmp/berth/requirements.txt

# -- runtime: the base, nginx, the virtualenv and the code; runs as an unprivileged user ---------
FROM ${BASE}
LABEL org.opencontainers.image.title=Berth \
      org.opencontainers.image.description="Sign in once, launch web tools at stable addresses"
# nginx is here so that the same image runs the proxy (entrypoint "nginx").
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends nginx ca-certificates >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 berth \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/berth berth
COPY --from=build /opt/berth /opt/berth
COPY . /app
# Editable, so that the code stays in /app beside the nginx templates and migrations it reads.
# Last, and small: a change to the code rebuilds only these two layers.
RUN /opt/berth/bin/pip install --no-cache-dir -q --no-deps --no-build-isolation -e /app
WORKDIR /app
# Metrics files go to /tmp, the one writable place (also for `berth` run with docker exec).
ENV PATH=/opt/berth/bin:$PATH BERTH_DATA_DIR=/home/berth/data PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 BERTH_METRICS_DIR=/tmp/berth-metrics
# A numeric user, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
# 8101 and 8102 also answer GET /metrics; 9102 is the worker's, when BERTH_WORKER_METRICS_PORT
# is set to it (as the deploy files do).
EXPOSE 8080 8101 8102 9102
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["web"]
