"""Throw-away certificates for TLS tests, made by the openssl command (installed if missing)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # a self-signed CA certificate
    ca_key: Path
    server_cert: Path  # signed by `ca`, for 127.0.0.1 (CN and subjectAltName)
    server_key: Path
    garbage: Path  # a file that is not a certificate


def _openssl() -> str:
    found = shutil.which("openssl")
    if found is None:  # pragma: no cover - Debian images ship it
        subprocess.run(["apt-get", "install", "-y", "-q", "openssl"], check=True)
        found = "openssl"
    return found


def make_pki(root: Path, name: str = "lendstream-test-ca") -> Pki:
    root.mkdir(parents=True, exist_ok=True)
    openssl = _openssl()
    pki = Pki(
        root / "ca.crt", root / "ca.key", root / "server.crt", root / "server.key",
        root / "garbage.pem",
    )  # fmt: skip

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", str(pki.ca_key), "-out", str(pki.ca))  # fmt: skip
    csr, extensions = root / "server.csr", root / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(pki.server_key), "-out", str(csr))  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(pki.ca), "-CAkey", str(pki.ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(extensions),
        "-out", str(pki.server_cert))  # fmt: skip
    pki.garbage.write_text("not a certificate\n")
    return pki
