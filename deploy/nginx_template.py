"""Fill the proxy secret into an nginx configuration rendered beforehand, and write it under prefix.

The entrypoint's `nginx` runs this when BERTH_NGINX_TEMPLATE names such a file. Kubernetes keeps
the rendered configuration in a ConfigMap, which is no place for a secret, so it is rendered with
the text ${BERTH_PROXY_SECRET} in place of the secret (deploy/kubernetes/README.md), and the real
value comes from the environment (a Secret) when the container starts:

    python -m deploy.nginx_template TEMPLATE PREFIX
"""
import os
import re
import sys
from pathlib import Path

PLACEHOLDER = "${BERTH_PROXY_SECRET}"


class TemplateError(ValueError):
    pass


def fill(text, secret, prefix):
    """The configuration with the secret in place; refuses what would not work or would leak."""
    if PLACEHOLDER not in text:
        raise TemplateError(f"the template has no {PLACEHOLDER}: render it with "
                            f"BERTH_PROXY_SECRET='{PLACEHOLDER}' (deploy/kubernetes/README.md)")
    # The secret sits inside double quotes in nginx's configuration: keep it to URL-safe text.
    if not re.fullmatch(r"[A-Za-z0-9_.~-]{16,}", secret or ""):
        raise TemplateError("BERTH_PROXY_SECRET must be set: at least 16 letters, digits, '-', '_', "
                            "'.' or '~' (e.g. openssl rand -hex 32)")
    if f"{prefix}/tmp/proxy" not in text:
        raise TemplateError(f"the template was rendered for another nginx prefix than {prefix}: "
                            f"render it with --prefix {prefix}")
    return text.replace(PLACEHOLDER, secret)


def main(argv):
    from berth.nginx_conf import prepare_prefix

    template, prefix = argv
    prefix = prefix.rstrip("/")
    try:
        text = fill(Path(template).read_text(encoding="utf-8"), os.environ.get("BERTH_PROXY_SECRET"),
                    prefix)
    except (OSError, TemplateError) as error:
        raise SystemExit(f"BERTH_NGINX_TEMPLATE={template}: {error}") from None
    prepare_prefix(prefix)
    target = Path(prefix) / "nginx.conf"
    target.write_text(text, encoding="utf-8")
    target.chmod(0o600)


if __name__ == "__main__":
    main(sys.argv[1:])
