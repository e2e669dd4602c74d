"""A certificate authority of one's own, made with openssl, for Berth over HTTPS on a machine
that no public CA vouches for: `make run-https` (`berth local-certificate`) and the tests.

    ca = LocalCA(folder)                                    # the CA in folder, made on first use
    chain, key = ca.issue("berth.localhost", ["tools.localhost"])  # the domain, *.domain, *.tools
    ca.spki_hash()          # for Chromium's --ignore-certificate-errors-spki-list

The server's chain is its certificate followed by the CA's, as a real CA's full chain is; a
client trusts the CA's certificate (requests: verify=ca.certificate), or Chromium the CA key's
hash. Production uses a real CA's wildcard certificate instead (docs/operations.md).
"""
import base64
import hashlib
import subprocess
from pathlib import Path


def _openssl(*args, stdin=None):
    return subprocess.run(["openssl", *args], check=True, capture_output=True, input=stdin).stdout


class LocalCA:
    def __init__(self, folder, days=2):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.days = days
        self.key = self.folder / "ca.key"
        self.certificate = self.folder / "ca.pem"
        if self.certificate.exists() and self.key.exists():
            return
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", str(self.key), "-out", str(self.certificate), "-days", str(days),
                 "-subj", "/CN=Berth local CA", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def issue(self, domain, other_domains=()):
        """A certificate for domain and *.domain (and each of other_domains and its wildcard):
        the paths of its chain (certificate, then the CA's) and of its key."""
        names = [name for each in (domain, *other_domains) for name in (each, f"*.{each}")]
        stem = self.folder / domain
        key, request, certificate, chain = (Path(f"{stem}{suffix}") for suffix in (".key", ".csr", ".pem", ".chain.pem"))
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
                 "-out", str(request), "-subj", f"/CN={domain}")
        extensions = self.folder / f"{domain}.ext"
        extensions.write_text("subjectAltName=" + ",".join(f"DNS:{name}" for name in names) + "\n"
                              "extendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n")
        _openssl("x509", "-req", "-in", str(request), "-CA", str(self.certificate), "-CAkey", str(self.key),
                 "-CAcreateserial", "-out", str(certificate), "-days", str(self.days), "-extfile", str(extensions))
        chain.write_bytes(certificate.read_bytes() + self.certificate.read_bytes())
        key.chmod(0o600)
        self.key.chmod(0o600)
        return chain, key

    def spki_hash(self):
        """base64(sha256(the CA's SubjectPublicKeyInfo)), as Chromium's SPKI lists take it."""
        public = _openssl("x509", "-in", str(self.certificate), "-noout", "-pubkey")
        der = _openssl("pkey", "-pubin", "-outform", "DER", stdin=public)
        return base64.b64encode(hashlib.sha256(der).digest()).decode()
