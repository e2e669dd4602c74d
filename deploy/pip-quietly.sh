#!/usr/bin/env bash
# Run pip with one progress line instead of its output, which goes to a log shown on failure.
#   deploy/pip-quietly.sh "Installing JupyterLab" .venv-tools/bin/pip install 'jupyterlab>=4'
# On a terminal the line counts the packages as pip collects them, in place.
set -uo pipefail
label=$1; shift
log=$(mktemp)
trap 'rm -f "$log"' EXIT
count() {
  if [ -t 1 ]; then
    awk -v label="$label" '/^Collecting /{n++; printf "\r%s: %d packages…", label, n; fflush()}
                           /^Installing collected/{printf "\r%s: installing %d packages…", label, n; fflush()}
                           END{printf "\r%s: done (%d packages).       \n", label, n}'
  else
    awk -v label="$label" 'BEGIN{print label "…"; fflush()} /^Collecting /{n++} END{print label ": done (" n " packages)."}'
  fi
}
"$@" --progress-bar off 2>&1 | tee "$log" | count
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
  cat "$log" >&2
  exit "$status"
fi
