#!/bin/sh
# Render nginx.conf for the ConfigMap berth-nginx (control-plane/kustomization.yaml):
#   deploy/kubernetes/render-nginx-conf.sh berth.example.com registry.example.com/berth:TAG \
#     > deploy/kubernetes/control-plane/nginx.conf
# It runs `berth nginx-conf` in Berth's image, so that the paths in it (static files, mime types)
# are the image's, for the prefix the entrypoint uses (/tmp/nginx) and the Services' names. The
# secret is left as the text ${BERTH_PROXY_SECRET}: the entrypoint fills it in from the Secret when
# nginx starts (deploy/nginx_template.py), so the ConfigMap holds no secret. Render again, and
# apply, after upgrading Berth or changing BERTH_DOMAIN.
# BERTH_LOCAL=1 runs the `berth` on PATH instead of the image (the tests do).
set -eu
domain=${1:?usage: render-nginx-conf.sh DOMAIN [IMAGE]}
image=${2:-berth:latest}
set -- nginx-conf --standalone --prefix /tmp/nginx --listen 8080 \
  --auth-server berth-auth:8101 --web-server berth-web:8102
placeholder='${BERTH_PROXY_SECRET}'
if [ -n "${BERTH_LOCAL:-}" ]; then
  BERTH_DOMAIN=$domain BERTH_PROXY_SECRET=$placeholder BERTH_TOOL_KEEPALIVE=false exec berth "$@"
fi
# The other settings that shape nginx.conf pass through when set here.
exec "${DOCKER:-docker}" run --rm -e "BERTH_DOMAIN=$domain" -e "BERTH_PROXY_SECRET=$placeholder" \
  -e BERTH_TOOL_KEEPALIVE=false -e BERTH_SESSION_COOKIE -e BERTH_AUTH_CACHE_SECONDS \
  -e BERTH_LOG_FORMAT -e BERTH_NGINX_CLIENT_MAX_BODY_SIZE -e BERTH_NGINX_PROXY_CONNECT_TIMEOUT \
  -e BERTH_NGINX_PROXY_READ_TIMEOUT -e BERTH_NGINX_PROXY_SEND_TIMEOUT -e BERTH_NGINX_PROXY_BUFFER_SIZE \
  -e BERTH_NGINX_PROXY_BUFFERS -e BERTH_NGINX_RESOLVER -e BERTH_NGINX_ACCESS_LOG \
  -e BERTH_NGINX_ACCESS_LOG_FORMAT -e BERTH_NGINX_INCLUDE_DIR \
  "$image" berth "$@"
