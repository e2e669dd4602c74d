#!/usr/bin/env bash
# Run pip with a line of progress instead of its output, which is shown only if pip fails.
#   deploy/pip-quietly.sh "Installing JupyterLab" .venv-tools/bin/pip install 'jupyterlab>=4'
# On a terminal the line counts, in place, the packages pip has collected so far.
set -uo pipefail
label=$1; shift
log=$(mktemp)
trap 'rm -f "$log"' EXIT
fetched='^(Collecting|Processing) '
if [ -t 1 ]; then
  "$@" --progress-bar off 2>&1 | tee "$log" |
    awk -v label="$label" -v fetched="$fetched" '$0 ~ fetched {n++; printf "\r%s: %d packages…", label, n; fflush()}'
  status=${PIPESTATUS[0]}
  printf '\r\033[K'
else
  echo "$label…"
  "$@" --progress-bar off >"$log" 2>&1
  status=$?
fi
if [ "$status" -ne 0 ]; then
  echo "$label failed; pip said:" >&2
  cat "$log" >&2
  exit "$status"
fi
count=$(grep -cE "$fetched" "$log")
echo "$label: done ($count package$([ "$count" = 1 ] || echo s))."
