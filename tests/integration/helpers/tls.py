"""Certificates for TLS tests, made with the openssl CLI: a private CA and
EC P-256 leaf certificates signed by it, valid for two days."""

import os
import subprocess


def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(d, name):
    """A self-signed CA in directory D; returns (key path, certificate path)."""
    key, pem = d / f"{name}.key", d / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(pem), "-days", "2", "-subj", f"/CN={name}")
    return key, pem


def make_cert(d, ca, name, sans, client=False, serial=None):
    """A certificate for NAME signed by CA (a make_ca result), with DNS SANS
    (None: no SAN), for client or server use; returns (certificate, key)."""
    key, csr, pem = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    ext = d / f"{name}.ext"
    lines = []
    if sans:
        lines.append("subjectAltName=" + ",".join(f"DNS:{s}" for s in sans))
    lines.append("extendedKeyUsage=" + ("clientAuth" if client else "serverAuth"))
    ext.write_text("\n".join(lines) + "\n")
    cmd = ["x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
           "-out", str(pem), "-days", "2", "-extfile", str(ext)]
    cmd += ["-set_serial", str(serial)] if serial else ["-CAcreateserial"]
    _openssl(*cmd)
    os.chmod(key, 0o600)
    return pem, key
