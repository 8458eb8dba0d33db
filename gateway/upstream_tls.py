"""TLS to the upstreams: an upstream's `tls` section, and the one `ssl.SSLContext` each
https upstream gets, built when the config loads (and again at each reload, so certificate
files rotated on disk are read anew).

Every problem with a file (missing, unreadable, not PEM, a key that does not belong to its
certificate, an encrypted key) is a config error at its YAML location
(`upstreams.registry.tls.ca_file: cannot read ...`), found at load, never at the first
request. Verification is on unless `verify: false` is written out, and the gateway warns
about that at start and at each reload. `tls_failure` words a failed TLS connection for
the 502 the client gets.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from tokenward.gateway.config_decode import (
    Checker,
    boolean,
    described,
    file_path,
    optional,
    rule,
    setting,
    string,
)

log = structlog.get_logger("tokenward")

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\Z")
_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY = b"PRIVATE KEY-----"  # PKCS#8, RSA, EC, and ENCRYPTED (refused below) keys
HANDSHAKE_HINT = "does it require a client certificate (tls.cert_file) or a TLS version or cipher we lack?"


@described({"type": "string", "minLength": 1, "description": "the DNS name sent as SNI and verified"})
def _server_name(value: object) -> str:
    text = string(value).lower().rstrip(".")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        raise ValueError(f"{value!r} is an IP address: server_name is the DNS name the certificate is for")
    if not _HOST_NAME.match(text):
        raise ValueError(f"{value!r} is not a host name: expected the name in the upstream's certificate")
    return text


@described({"enum": ["1.2", "1.3", 1.2, 1.3, "TLSv1.2", "TLSv1.3"]})
def _tls_version(value: object) -> str:
    """"1.2" or "1.3"; unquoted YAML numbers (1.2) and "TLSv1.3" are read the same."""
    text = str(value) if isinstance(value, str | float) else ""
    text = text.removeprefix("TLSv")
    if text not in VERSIONS:
        raise ValueError(f"{value!r} is not allowed: expected \"1.2\" or \"1.3\"")
    return text


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """How tokenward speaks TLS to an https:// upstream."""

    verify: bool = setting(True, boolean)  # check the certificate and its name (false: warned at start)
    ca_file: Path | None = setting(None, optional(file_path))  # PEM CA bundle trusted instead of the system's
    cert_file: Path | None = setting(None, optional(file_path))  # client certificate (PEM): mutual TLS
    key_file: Path | None = setting(None, optional(file_path))  # its key (PEM, unencrypted); absent: in cert_file
    server_name: str | None = setting(None, optional(_server_name))  # SNI and the name verified; default: URL host
    min_version: str = setting("1.2", _tls_version)  # the oldest TLS version accepted: "1.2" or "1.3"


@rule(UpstreamTls)
def _consistent(checker: Checker, tls: UpstreamTls, given: Mapping[str, Any], loc: str) -> None:
    if tls.key_file is not None and tls.cert_file is None:
        checker.problem(f"{loc}.key_file", "needs cert_file: the client certificate this key belongs to")
    if not tls.verify and tls.ca_file is not None:
        checker.problem(f"{loc}.ca_file", "has no use with verify: false (nothing is verified); drop one of them")


class _Encrypted(Exception):
    """The key asks for a passphrase: a server never prompts for one."""


def _refuse_passphrase() -> bytes:
    raise _Encrypted


def _read_pem(checker: Checker, path: Path, loc: str, marker: bytes, what: str) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        checker.problem(loc, f"cannot read {path}: {exc.strerror or exc}")
        return None
    if marker not in data:
        checker.problem(loc, f"{path} holds no {what} in PEM form")
        return None
    return data


def tls_context(checker: Checker, tls: UpstreamTls, loc: str) -> ssl.SSLContext | None:
    """The context for an https upstream with this `tls` section (at `loc`); None when a
    file is unusable, each problem reported at its location."""
    problems = len(checker.problems)
    if tls.ca_file is None:
        context = ssl.create_default_context()  # the system's CAs, hostname check, secure defaults
    else:
        context = _ca_context(checker, checker.path(tls.ca_file), f"{loc}.ca_file")
    context.minimum_version = VERSIONS[tls.min_version]
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None:
        _load_client_certificate(checker, context, tls, loc)
    return context if len(checker.problems) == problems else None


def _ca_context(checker: Checker, path: Path, loc: str) -> ssl.SSLContext:
    """A context that trusts the CAs in `path` and no others."""
    data = _read_pem(checker, path, loc, _CERTIFICATE, "CA certificate")
    if data is not None:
        try:
            return ssl.create_default_context(cadata=data.decode("ascii", "replace"))
        except ssl.SSLError as exc:
            checker.problem(loc, f"{path}: not a usable CA certificate ({exc.reason or exc})")
    return ssl.create_default_context()  # only to check the other files with: never used


def _load_client_certificate(checker: Checker, context: ssl.SSLContext, tls: UpstreamTls, loc: str) -> None:
    assert tls.cert_file is not None
    cert_loc, key_loc = f"{loc}.cert_file", f"{loc}.key_file"
    cert = checker.path(tls.cert_file)
    key = checker.path(tls.key_file) if tls.key_file is not None else None
    if _read_pem(checker, cert, cert_loc, _CERTIFICATE, "certificate") is None:
        return
    if key is not None and _read_pem(checker, key, key_loc, _PRIVATE_KEY, "private key") is None:
        return
    key_loc = key_loc if key is not None else cert_loc
    try:
        context.load_cert_chain(cert, key, password=_refuse_passphrase)
    except _Encrypted:
        checker.problem(key_loc, "the private key is encrypted: give an unencrypted key (protect the file instead)")
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc)
        if "KEY_VALUES_MISMATCH" in str(exc):
            checker.problem(key_loc, f"the private key does not belong to the certificate in {cert}")
        elif key is None:
            checker.problem(cert_loc, f"{cert} holds no usable private key ({reason}): give key_file")
        else:
            checker.problem(key_loc, f"cannot load the certificate and key ({reason})")


def connect_failure(upstream: str, exc: OSError, tls: bool) -> str:
    """Why a new connection to the upstream failed, for the 502."""
    if isinstance(exc, ssl.SSLError):
        return f"upstream {upstream}: {tls_failure(exc)}"
    if tls and isinstance(exc, ConnectionResetError):  # a server that closes instead of sending its alert
        return f"upstream {upstream} closed the connection in the TLS handshake: {HANDSHAKE_HINT}"
    return f"upstream {upstream} is unreachable ({exc.strerror or exc or type(exc).__name__})"


def tls_alert(exc: BaseException | None) -> str | None:
    """What ended an open connection, if TLS did (an alert: TLS 1.3 refuses a missing client
    certificate after the handshake); None for an ordinary close, EOF without close_notify too."""
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
        return tls_failure(exc)
    return None


def tls_failure(exc: ssl.SSLError) -> str:
    """What a failed TLS connection to an upstream says in the 502 and the audit event."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its TLS certificate was refused: {exc.verify_message or exc.reason}"
    reason = str(exc.reason or exc)
    if "CERTIFICATE_REQUIRED" in reason:
        return f"it refused the TLS connection ({reason}): it requires a client certificate (tls.cert_file)"
    if "HANDSHAKE_FAILURE" in reason:
        return f"TLS handshake refused ({reason}): {HANDSHAKE_HINT}"
    return f"TLS failed ({reason})"


class HasTls(Protocol):
    @property
    def tls(self) -> UpstreamTls: ...
    @property
    def ssl_context(self) -> ssl.SSLContext | None: ...


def tls_files(upstreams: Mapping[str, HasTls], base_dir: Path) -> list[Path]:
    """The files the https upstreams' TLS contexts were built from (relative names: from
    `base_dir`, the config's folder); the config watcher reloads when one changes."""
    named = [
        name
        for upstream in upstreams.values()
        if upstream.ssl_context is not None
        for name in (upstream.tls.ca_file, upstream.tls.cert_file, upstream.tls.key_file)
        if name is not None
    ]
    return [name if name.is_absolute() else base_dir / name for name in named]


UNVERIFIED = (
    "upstream TLS certificate is not verified (tls.verify: false): anyone on the network path "
    "can read and forge its traffic, identity headers included"
)


def unverified(upstreams: Mapping[str, HasTls]) -> list[str]:
    """The https upstreams whose certificate is not checked (`verify: false`)."""
    return [name for name, upstream in upstreams.items() if upstream.ssl_context is not None and not upstream.tls.verify]


def warn_unverified(upstreams: Mapping[str, HasTls]) -> None:
    """One warning per unverified upstream: at start and at each reload."""
    for name in unverified(upstreams):
        log.warning(UNVERIFIED, upstream=name)
