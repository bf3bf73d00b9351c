"""Test certificates on trustme written to files, replaced the ways cert-manager and Kubernetes do,
and the certificate a TLS server presents to a new connection."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trustme

_versions = itertools.count(1)


@dataclass(frozen=True)
class Issued:
    """A leaf certificate's files and its DER bytes (to compare with what a server presents)."""

    cert_file: Path
    key_file: Path
    der: bytes = field(repr=False)


def chain_pem(leaf: trustme.LeafCert) -> bytes:
    return b"".join(blob.bytes() for blob in leaf.cert_chain_pems)


def der_of(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode("ascii"))


def write_ca(ca: trustme.CA, path: Path) -> Path:
    path.write_bytes(ca.cert_pem.bytes())
    return path


def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost")


def client_cert(
    ca: trustme.CA, common_name: str, organization: str, unit: str = "clients"
) -> trustme.LeafCert:
    """A client certificate whose subject is exactly CN=<common_name>,OU=<unit>,O=<organization>
    (trustme makes up a random OU unless given one, and needs a SAN: an e-mail address)."""
    return ca.issue_cert(
        f"{common_name}@clients.test",
        common_name=common_name,
        organization_name=organization,
        organization_unit_name=unit,
    )


def write_leaf(leaf: trustme.LeafCert, directory: Path, stem: str = "tls") -> Issued:
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_file.write_bytes(chain_pem(leaf))
    key_file.write_bytes(leaf.private_key_pem.bytes())
    return Issued(cert_file, key_file, der_of(leaf))


def replace_file(path: Path, data: bytes) -> None:
    """Replace `path` at once (a new inode): write a sibling, then rename it over."""
    tmp = path.with_name(f".{path.name}.{next(_versions)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def replace_leaf(files: Issued, leaf: trustme.LeafCert) -> Issued:
    """Replace the certificate, then the key, one file at a time like most tools do: in between
    the pair does not match."""
    replace_file(files.cert_file, chain_pem(leaf))
    replace_file(files.key_file, leaf.private_key_pem.bytes())
    return Issued(files.cert_file, files.key_file, der_of(leaf))


class SecretVolume:
    """A directory laid out like a Kubernetes Secret volume: `tls.crt -> ..data/tls.crt`,
    `..data -> ..<version>/`; `publish` writes a new version directory and swaps `..data` by
    renaming a new symlink over it, the way the kubelet's atomic writer does."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.directory / name

    def publish(self, files: Mapping[str, bytes]) -> None:
        data = self.directory / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        version = f"..2026_01_01_00_00_00.{next(_versions)}"
        (self.directory / version).mkdir()
        for name, content in files.items():
            (self.directory / version / name).write_bytes(content)
        tmp = self.directory / "..data_tmp"
        os.symlink(version, tmp)
        os.replace(tmp, data)
        for name in files:
            link = self.directory / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        if old is not None:
            shutil.rmtree(self.directory / old)

    def publish_leaf(self, leaf: trustme.LeafCert) -> Issued:
        self.publish({"tls.crt": chain_pem(leaf), "tls.key": leaf.private_key_pem.bytes()})
        return Issued(self.path("tls.crt"), self.path("tls.key"), der_of(leaf))


def presented_certificate(address: str, ca_file: Path, timeout_s: float = 5.0) -> bytes:
    """The DER certificate a TLS server at host:port presents to a new connection (blocking:
    run it in a thread next to an in-process server)."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["h2"])  # as a gRPC client offers (gRPC 1.85 also accepts none)
    with (
        socket.create_connection((host, int(port)), timeout=timeout_s) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der
