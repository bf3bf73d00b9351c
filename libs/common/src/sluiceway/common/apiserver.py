"""The gRPC server of an API service (planner's Control, tracker's Tracker): authentication,
TLS, health and reflection, wired the same way for both."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from sluiceway.common.authn import Audit, Authenticator, AuthInterceptor
from sluiceway.common.metrics import reachable_host
from sluiceway.common.principals import PrincipalsError, PrincipalsFile
from sluiceway.common.service import HealthServer, serving_status
from sluiceway.common.settings import Settings, SettingsError, split_addr
from sluiceway.common.tlsfiles import ServerTlsFiles, TlsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiSecurity:
    authenticator: Authenticator
    audit: Audit
    tls: ServerTlsFiles | None

    @property
    def scheme(self) -> str:
        return "tls" if self.tls is not None else "plaintext"


def api_security(settings: Settings, registry: CollectorRegistry | None) -> ApiSecurity:
    """Authentication and TLS of an API server from its settings. Raises SettingsError naming
    the variable: authentication on (the default) needs a principals file, TLS needs both a
    certificate and a key."""
    if settings.auth:
        if not settings.auth_principals_file:
            raise SettingsError(
                "SLUICEWAY_AUTH is on (the default) but SLUICEWAY_AUTH_PRINCIPALS_FILE is not set:"
                " name the principals file (docs/security.md), or set SLUICEWAY_AUTH=off"
                " for a stack only you can reach"
            )
        try:
            principals: PrincipalsFile | None = PrincipalsFile(settings.auth_principals_file)
        except PrincipalsError as exc:
            raise SettingsError(f"SLUICEWAY_AUTH_PRINCIPALS_FILE: {exc}") from None
    else:
        principals = None
        log.warning("authentication is off (SLUICEWAY_AUTH=off): every caller may do everything")
    tls = None
    if settings.tls_cert_file or settings.tls_key_file or settings.tls_client_ca_file:
        if not (settings.tls_cert_file and settings.tls_key_file):
            raise SettingsError(
                "SLUICEWAY_TLS_CERT_FILE and SLUICEWAY_TLS_KEY_FILE: set both, or neither"
            )
        tls = ServerTlsFiles(
            settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
        )
    return ApiSecurity(Authenticator(principals), Audit(registry), tls)


class ApiServer:
    """A grpc.aio server with the interceptor, health (open) and reflection (open)."""

    def __init__(
        self, security: ApiSecurity, service_names: tuple[str, ...], health_addr: str = ""
    ) -> None:
        self.security = security
        # a plaintext health-only port as well (SLUICEWAY_HEALTH_ADDR): Kubernetes' native gRPC
        # probe cannot speak TLS to the API port
        self._health_addr = health_addr
        self.probe: HealthServer | None = None
        self.server = grpc.aio.server(
            interceptors=[AuthInterceptor(security.authenticator, security.audit)]
        )
        self.health = health.aio.HealthServicer()
        self._names = service_names
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )

    async def start(self, addr: str, setting: str) -> str:
        """Bind `addr` (port 0: any free one), start, say SERVING; returns a reachable
        host:port. Raises SettingsError for a TLS file that cannot be used, OSError when the
        address cannot be bound."""
        host, _ = split_addr(addr, setting)
        if self.security.tls is None:
            port = self.server.add_insecure_port(addr)
        else:
            try:
                credentials = self.security.tls.credentials()
            except TlsError as exc:
                raise SettingsError(str(exc)) from None
            port = self.server.add_secure_port(addr, credentials)
        if port == 0:
            raise OSError(f"cannot bind {setting}={addr}")
        await self.server.start()
        for name in ("", *self._names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self._health_addr:
            self.probe = HealthServer()
            await self.probe.start(self._health_addr)
            await self.probe.serving()
            for name in self._names:  # per service too, for a readiness probe that names it
                await self.probe.set(name, True)
        bound = f"{reachable_host(host)}:{port}"
        log.info(
            "serving %s on %s (%s, authentication %s)",
            ", ".join(self._names),
            bound,
            self.security.scheme,
            "on" if self.security.authenticator.enabled else "OFF",
        )
        return bound

    async def set_serving(self, name: str, ok: bool) -> None:
        """One of this server's services is (not) fit to answer, on the API port and the probe
        port alike; the process itself ("") stays SERVING (liveness is not readiness)."""
        await self.health.set(name, serving_status(ok))
        if self.probe is not None:
            await self.probe.set(name, ok)

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING first (probes stop routing here), then stop with grace."""
        try:
            await self.health.enter_graceful_shutdown()
            if self.probe is not None:
                await self.probe.stop(0)
        finally:
            await self.server.stop(grace_s)
