"""Where etcd is and how to talk to it, from the environment.

Kept apart from the client so a bad setting is reported (naming the variable)
before any connection is attempted, and so the CLI can validate it cheaply.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_AUTHORITY = "127.0.0.1:2379"
SCHEMES = ("http", "https")


class ConfigError(ValueError):
    """An etcd setting (environment variable or argument) that cannot be used."""


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    @property
    def target(self) -> str:
        """host:port to dial; IPv6 literals need brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.target}"


def check_one_scheme(endpoints: tuple[Endpoint, ...] | list[Endpoint], var: str = "ETCD_ENDPOINTS") -> None:
    """Refuse a list that mixes http and https.

    The client fails over from one endpoint to the next; with a mixed list an
    unreachable (or blocked) TLS member would quietly move the program onto a
    plaintext connection, sending keys and policy in the clear.  Such a list
    is a mistake either way, so it is a configuration error, not a fallback.
    """
    schemes = {e.scheme for e in endpoints}
    if len(schemes) > 1:
        plain = ", ".join(str(e) for e in endpoints if not e.tls)
        raise ConfigError(f"{var}: mixes https:// and http:// endpoints ({plain} would be plaintext); "
                          "list endpoints of one scheme only (no fallback to plaintext)")


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[Endpoint, ...]
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        # Every client is built from an EtcdConfig, however its endpoints were given.
        check_one_scheme(self.endpoints)


def _port(text: str, var: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"{var}: port {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{var}: port {port} out of range 1..65535")
    return port


def parse_endpoint(text: str, var: str = "ETCD_ENDPOINTS") -> Endpoint:
    """`http://host:port` -> Endpoint; the port defaults to 2379."""
    text = text.strip()
    if "://" not in text:
        raise ConfigError(f"{var}: endpoint {text!r} needs a scheme (http:// or https://)")
    u = urlsplit(text)
    if u.scheme not in SCHEMES:
        raise ConfigError(f"{var}: endpoint {text!r} has scheme {u.scheme!r}, expected http or https")
    if u.path not in ("", "/") or u.query or u.fragment or u.username:
        raise ConfigError(f"{var}: endpoint {text!r} must be scheme://host:port only")
    try:
        host, port = u.hostname, u.port
    except ValueError as e:
        raise ConfigError(f"{var}: endpoint {text!r}: {e}") from None
    if not host:
        raise ConfigError(f"{var}: endpoint {text!r} has no host")
    return Endpoint(u.scheme, host, port or 2379)


def parse_authority(text: str, scheme: str) -> Endpoint:
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"ETCD_AUTHORITY: {text!r} is not host:port")
        port = rest[1:] if rest else "2379"
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, "2379"
    if not host or any(c in host for c in "/ @"):
        raise ConfigError(f"ETCD_AUTHORITY: {text!r} is not host:port")
    return Endpoint(scheme, host, _port(port, "ETCD_AUTHORITY"))


def _file(var: str, env: Mapping[str, str]) -> str | None:
    path = env.get(var, "").strip()
    if not path:
        return None
    if not os.path.isfile(path):
        raise ConfigError(f"{var}: {path!r} is not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{var}: {path!r} is not readable")
    return path


def from_env(env: Mapping[str, str] | None = None) -> EtcdConfig:
    """Read ETCD_ENDPOINTS | ETCD_AUTHORITY+ETCD_SCHEME and the TLS files."""
    env = os.environ if env is None else env
    endpoints_text = env.get("ETCD_ENDPOINTS", "").strip()
    if endpoints_text:
        parts = [p for p in endpoints_text.split(",") if p.strip()]
        if not parts:
            raise ConfigError("ETCD_ENDPOINTS: no endpoint given")
        endpoints = tuple(parse_endpoint(p) for p in parts)
        check_one_scheme(endpoints)
    else:
        scheme = env.get("ETCD_SCHEME", "").strip().lower() or "http"
        if scheme not in SCHEMES:
            raise ConfigError(f"ETCD_SCHEME: {scheme!r} is not http or https")
        endpoints = (parse_authority(env.get("ETCD_AUTHORITY", "").strip() or DEFAULT_AUTHORITY, scheme),)
    ca = _file("ETCD_CA_CERT_FILE", env)
    cert = _file("ETCD_CERT_FILE", env)
    key = _file("ETCD_KEY_FILE", env)
    if bool(cert) != bool(key):
        missing = "ETCD_KEY_FILE" if cert else "ETCD_CERT_FILE"
        raise ConfigError(f"{missing}: must be set together with "
                          f"{'ETCD_CERT_FILE' if cert else 'ETCD_KEY_FILE'}")
    return EtcdConfig(endpoints, ca, cert, key)
