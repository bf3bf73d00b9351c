"""TLS for the gRPC servers and clients: PEM files checked at start, reloaded when they change."""

from __future__ import annotations

import errno
import logging
import os
import ssl
import threading
from dataclasses import dataclass

import grpc

logger = logging.getLogger(__name__)

# The environment variables the server files come from; errors name them so that an operator
# knows which setting of which Deployment to fix.
CERT_FILE_SETTING = "SLUICEWAY_TLS_CERT_FILE"
KEY_FILE_SETTING = "SLUICEWAY_TLS_KEY_FILE"
CLIENT_CA_FILE_SETTING = "SLUICEWAY_TLS_CLIENT_CA_FILE"

# PEM certificates and keys are a few KiB; the cap keeps a wrong path (a log, /dev/zero) from
# being read whole on gRPC's handshake thread.
MAX_PEM_BYTES = 1 << 20

# A reload reads the files twice and retries when they differ (a writer caught mid-way).
_READ_ATTEMPTS = 3

_Stamp = tuple[tuple[int, int, int], ...]


class TlsError(ValueError):
    """A TLS file that cannot be used: the message names the setting and the file, never what
    the file holds (a private key must not reach a log)."""


@dataclass(frozen=True)
class _Pems:
    cert: bytes
    key: bytes
    client_ca: bytes


@dataclass(frozen=True)
class ServerTlsFiles:
    """The server's certificate chain and key, and optionally the CA its clients' certificates
    must come from (mutual TLS: a client without one is refused during the handshake)."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up replaced files on new connections; TlsError if the
        files cannot be used now."""
        stamp, pems = self._load()
        reloader = _Reloader(self, stamp)
        return grpc.dynamic_ssl_server_credentials(
            _configuration(pems),
            reloader.fetch,
            require_client_authentication=bool(self.client_ca_file),
        )

    def _files(self) -> list[tuple[str, str]]:
        out = [(CERT_FILE_SETTING, self.cert_file), (KEY_FILE_SETTING, self.key_file)]
        if self.client_ca_file:
            out.append((CLIENT_CA_FILE_SETTING, self.client_ca_file))
        return out

    def _stamp(self) -> _Stamp:
        return tuple(_stamp(path) for _, path in self._files())

    def _read(self) -> _Pems:
        cert = _read(CERT_FILE_SETTING, self.cert_file)
        key = _read(KEY_FILE_SETTING, self.key_file)
        ca = _read(CLIENT_CA_FILE_SETTING, self.client_ca_file) if self.client_ca_file else b""
        return _Pems(cert, key, ca)

    def _load(self) -> tuple[_Stamp, _Pems]:
        for _ in range(_READ_ATTEMPTS):
            stamp = self._stamp()
            pems = self._read()
            _check_certificates(CERT_FILE_SETTING, self.cert_file, pems.cert)
            _check_key(KEY_FILE_SETTING, self.key_file, pems.key, CERT_FILE_SETTING, self.cert_file)
            if self.client_ca_file:
                _check_certificates(CLIENT_CA_FILE_SETTING, self.client_ca_file, pems.client_ca)
            # The pair check reads the files by path (ssl parses keys from files only), so the
            # bytes handed to gRPC are the checked ones only if nothing changed meanwhile.
            if self._read() == pems:
                return stamp, pems
        raise TlsError(
            f"{CERT_FILE_SETTING}={self.cert_file}: the TLS files kept changing while being read"
        )


class _Reloader:
    """The fetcher gRPC calls before every new handshake, on one of its own threads."""

    def __init__(self, files: ServerTlsFiles, stamp: _Stamp) -> None:
        self._files = files
        self._lock = threading.Lock()
        # The files last tried, usable or not: an unusable set is reported once, not on every
        # handshake, and tried again as soon as any of the files changes.
        self._tried = stamp

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            with self._lock:
                return self._fetch()
        except Exception:
            # gRPC would go on with the old certificate anyway; the log says why.
            logger.exception("TLS reload of %s failed", self._files.cert_file)
            return None

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        stamp = self._files._stamp()
        if stamp == self._tried:
            return None
        try:
            loaded, pems = self._files._load()
        except TlsError as e:
            self._tried = stamp
            logger.warning(
                "TLS files changed but cannot be used, serving the last good ones: %s", e
            )
            return None
        self._tried = loaded
        logger.info("TLS files reloaded: %s", self._files.cert_file)
        return _configuration(pems)


def _configuration(pems: _Pems) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(pems.key, pems.cert)], root_certificates=pems.client_ca or None
    )


def _stamp(path: str) -> tuple[int, int, int]:
    # stat follows symlinks: a Kubernetes Secret volume swaps the `..data` link, not the files.
    try:
        st = os.stat(path)
    except OSError as e:
        # A file that vanished or cannot be read is a state of its own, so that it is reported
        # once and tried again when it comes back.
        return (-1, e.errno or 0, 0)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _read(setting: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as e:
        why = "no such file" if e.errno == errno.ENOENT else (e.strerror or type(e).__name__)
        raise TlsError(f"{setting}={path}: {why.lower()}") from None
    if not data.strip():
        raise TlsError(f"{setting}={path}: empty file")
    if len(data) > MAX_PEM_BYTES:
        raise TlsError(f"{setting}={path}: larger than {MAX_PEM_BYTES} bytes, not a PEM file")
    return data


def _ssl_reason(e: ssl.SSLError) -> str:
    # "[X509: KEY_VALUES_MISMATCH] key values mismatch (_ssl.c:3926)": the source line is noise
    return str(e.args[1] if len(e.args) > 1 else e).split(" (_ssl.c")[0]


def _check_certificates(setting: str, path: str, data: bytes) -> None:
    begins = data.count(b"-----BEGIN CERTIFICATE-----")
    ends = data.count(b"-----END CERTIFICATE-----")
    if not begins:
        raise TlsError(f"{setting}={path}: no PEM certificate in the file")
    if begins != ends:
        # what a file caught while being written looks like; OpenSSL's words for it are obscure
        raise TlsError(f"{setting}={path}: incomplete PEM certificate")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii"))
    except UnicodeDecodeError:
        raise TlsError(f"{setting}={path}: not a PEM file (non-ASCII bytes)") from None
    except ssl.SSLError as e:
        raise TlsError(f"{setting}={path}: unreadable certificate ({_ssl_reason(e)})") from None


class _Encrypted(Exception):
    pass


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise _Encrypted


def _check_key(
    key_setting: str, key_path: str, key: bytes, cert_setting: str, cert_path: str
) -> None:
    """The key parses and belongs to the certificate (the certificate is checked already)."""
    if b"PRIVATE KEY-----" not in key:
        raise TlsError(f"{key_setting}={key_path}: no PEM private key in the file")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
            cert_path, key_path, password=_no_password
        )
    except _Encrypted:
        raise TlsError(f"{key_setting}={key_path}: encrypted keys are not supported") from None
    except OSError as e:
        if isinstance(e, ssl.SSLError) and e.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(
                f"{key_setting}={key_path}: does not match the certificate of "
                f"{cert_setting}={cert_path}"
            ) from None
        reason = _ssl_reason(e) if isinstance(e, ssl.SSLError) else (e.strerror or repr(e))
        raise TlsError(f"{key_setting}={key_path}: unreadable private key ({reason})") from None


def peer_identity(context: grpc.aio.ServicerContext) -> str | None:
    """The subject of the caller's verified client certificate, as gRPC gives it (RFC 2253, most
    specific first: "CN=alice,OU=team-a,O=payments"); None over plaintext or TLS without a
    client certificate."""
    # The Python server credentials either do not ask for a client certificate or require and
    # verify one, so a subject here was verified; gRPC's "authenticated" flag is checked too in
    # case other credentials (xDS) ever let an unverified certificate through.
    if context.peer_identities() is None:
        return None
    # gRPC's property is "x509_subject" (GRPC_X509_SUBJECT_PROPERTY_NAME); there is no
    # "x509_subject_name", and "x509_common_name" alone would drop the O and OU.
    subject = context.auth_context().get("x509_subject")
    if not subject:
        return None
    value: bytes = subject[0]
    return value.decode("utf-8", errors="replace")


def client_credentials(
    ca_file: str = "", cert_file: str = "", key_file: str = ""
) -> grpc.ChannelCredentials:
    """Channel credentials trusting `ca_file` (the system roots if empty), presenting the client
    certificate `cert_file`/`key_file` if given (mutual TLS)."""
    if bool(cert_file) != bool(key_file):
        given, missing = ("cert_file", "key_file") if cert_file else ("key_file", "cert_file")
        raise TlsError(f"{given}={cert_file or key_file}: {missing} is needed with it")
    ca = b""
    if ca_file:
        ca = _read("ca_file", ca_file)
        _check_certificates("ca_file", ca_file, ca)
    cert = key = b""
    if cert_file:
        cert = _read("cert_file", cert_file)
        key = _read("key_file", key_file)
        _check_certificates("cert_file", cert_file, cert)
        _check_key("key_file", key_file, key, "cert_file", cert_file)
    return grpc.ssl_channel_credentials(
        root_certificates=ca or None, private_key=key or None, certificate_chain=cert or None
    )
