#!/bin/sh
# One image, one process per container: web | auth | worker | migrate | nginx.
# Settings come from BERTH_* variables (docs/configuration.md).
# Every server is exec'd, so it is the container's PID 1: should it die, even by SIGKILL, the
# kernel kills every other process of the container, granian's and gunicorn's workers included
# (docs/operations.md, "berth run supervises its components").
set -eu
# The data directory is open to tools' users (their homes live in it); Berth's own files are not.
umask 077
command="${1:-web}"
[ $# -gt 0 ] && shift
# Every Berth process (the berth command too) writes its metrics here, and the container's own
# /metrics sums them (berth/metrics.py: web and auth on their port, the worker on
# BERTH_WORKER_METRICS_PORT): one folder per container, in /tmp since the root is read-only.
# Emptied at start: files from a previous run of the container would be summed too.
export BERTH_METRICS_DIR="${BERTH_METRICS_DIR:-/tmp/berth-metrics}"
rm -rf "$BERTH_METRICS_DIR" && mkdir -p "$BERTH_METRICS_DIR"
case "$command" in
  web)
    # granian, as for auth: it writes a response's head and body in one system call
    # (docs/decisions/0008).
    exec python -m deploy.granian_preloaded --interface wsgi --host 0.0.0.0 --port "${BERTH_WEB_PORT:-8102}" \
      --workers "${BERTH_WEB_WORKERS:-1}" --blocking-threads "${BERTH_WEB_THREADS:-8}" \
      --workers-kill-timeout 10 --no-ws --log-level warning --log-config deploy/granian-logging.json --factory webapp:create_server_app "$@" ;;
  auth)
    # granian: a Rust HTTP server that keeps nginx's connections alive (docs/decisions/0008).
    # deploy/granian_preloaded.py imports its modules once, before its workers fork, to share them.
    if [ "${BERTH_AUTH_SERVER:-granian}" = "gunicorn" ]; then
      exec gunicorn -c deploy/gunicorn.conf.py --bind "0.0.0.0:${BERTH_AUTH_PORT:-8101}" "auth_service:create_server_app()" "$@"
    fi
    exec python -m deploy.granian_preloaded --interface wsgi --host 0.0.0.0 --port "${BERTH_AUTH_PORT:-8101}" \
      --workers "${BERTH_AUTH_WORKERS:-2}" --blocking-threads "${BERTH_AUTH_THREADS:-4}" \
      --workers-kill-timeout 10 --no-ws --log-level warning --log-config deploy/granian-logging.json --factory auth_service:create_server_app "$@" ;;
  worker)
    # A container runtime sends SIGTERM, then SIGKILL ~10 s later: SIGTERM stops the worker
    # gracefully, its running steps get 9 s, and the launches still under way are handed back
    # to the other workers as it exits (berth/launch/tasks.py).
    exec huey_consumer berth.launch.tasks.huey -w "${BERTH_WORKER_THREADS:-4}" -k thread -g TERM -t 9 "$@" ;;
  migrate)
    # Run once per release, as its own job: never at the start of each replica.
    berth db upgrade
    if [ -n "${BERTH_CATALOGUE:-}" ]; then berth catalogue load "$BERTH_CATALOGUE"; fi
    if [ -n "${BERTH_ADMIN_EMAIL:-}" ] && [ -n "${BERTH_ADMIN_PASSWORD:-}" ]; then
      berth create-admin "$BERTH_ADMIN_EMAIL" --password "$BERTH_ADMIN_PASSWORD"
    fi ;;
  nginx)
    prefix="${BERTH_NGINX_PREFIX:-/tmp/nginx}"
    if [ -n "${BERTH_NGINX_TEMPLATE:-}" ]; then
      # Rendered beforehand (Kubernetes: a ConfigMap), with ${BERTH_PROXY_SECRET} standing for
      # the secret, which comes from the environment (deploy/kubernetes/README.md).
      python -m deploy.nginx_template "$BERTH_NGINX_TEMPLATE" "$prefix"
    else
      berth nginx-conf --standalone --prefix "$prefix" --listen "${BERTH_NGINX_LISTEN:-8080}" \
        --auth-server "${BERTH_AUTH_SERVER:-auth:8101}" --web-server "${BERTH_WEB_SERVER:-web:8102}" \
        --out "$prefix/nginx.conf"
    fi
    ln -sf /dev/stderr "$prefix/logs/error.log"  # the container's log, not a file in it
    ln -sf /dev/stdout "$prefix/logs/access.log"  # BERTH_NGINX_ACCESS_LOG's default, likewise
    exec nginx -p "$prefix" -c "$prefix/nginx.conf" -e stderr -g "daemon off;" ;;
  *)
    exec "$command" "$@" ;;
esac
