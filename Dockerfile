# One image for every Berth process; the entrypoint picks which (web | auth | worker | migrate | nginx).
# Build: docker build -t berth .     Run: see docker-compose.yml.
ARG BASE=python:3.11-slim-bookworm

# Build stage: the virtualenv, with Berth installed from /app (the same path as at run time).
FROM ${BASE} AS build
WORKDIR /app
COPY . .
RUN python -m venv /opt/berth && /opt/berth/bin/pip install --no-cache-dir -e .

FROM ${BASE}
# nginx is in the image so that the same image can run the proxy (entrypoint "nginx").
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx-light \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /home/berth --uid 10001 berth
COPY --from=build /opt/berth /opt/berth
COPY --from=build /app /app
WORKDIR /app
ENV PATH=/opt/berth/bin:$PATH BERTH_DATA_DIR=/home/berth/data PYTHONUNBUFFERED=1
USER berth
EXPOSE 8080 8101 8102
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["web"]
