"""Throwaway TLS material for tests: a CA, a server certificate for 127.0.0.1/localhost, a client certificate.

Made with the `openssl` command (Debian's openssl package), so this module stays stdlib-only.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class CertificateSet:
    ca_file: str
    ca_key_file: str
    server_cert_file: str
    server_key_file: str
    client_cert_file: str
    client_key_file: str


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise RuntimeError("the openssl command is needed to make test certificates: apt-get install openssl")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


def make_ca(directory: Path, name: str = "ca") -> tuple[str, str]:
    """A self-signed CA; returns (cert_file, key_file)."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN=etcdlock test {name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        cwd=directory,
    )
    return str(directory / f"{name}.pem"), str(directory / f"{name}.key")


def _signed(directory: Path, name: str, ca: tuple[str, str], extensions: str) -> tuple[str, str]:
    ext = directory / f"{name}.ext"
    ext.write_text(extensions)
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        ca[0],
        "-CAkey",
        ca[1],
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        ext.name,
        "-out",
        f"{name}.pem",
        cwd=directory,
    )
    return str(directory / f"{name}.pem"), str(directory / f"{name}.key")


def make_certificates(directory: str | Path) -> CertificateSet:
    d = Path(directory)
    ca = make_ca(d)
    server = _signed(
        d, "server", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    client = _signed(d, "client", ca, "extendedKeyUsage=clientAuth\n")
    return CertificateSet(ca[0], ca[1], server[0], server[1], client[0], client[1])
