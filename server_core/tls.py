"""The server-side TLS context, built from the ``--ssl-*`` options.

This module imports only :mod:`ssl`, so the master may call
:func:`make_ssl_context` while validating its configuration (a missing or
unreadable certificate is then a configuration error before any worker forks),
and each worker calls it again to get its own context.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from server_core.settings import ServerSettings


class TLSConfigError(ValueError):
    """The ``--ssl-*`` options do not make a usable TLS context."""


def make_ssl_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """The server TLS context for ``settings``, or None when TLS is off.

    Uses every option: certificate chain and key (with its password), protocol
    version, client-certificate requirement, CA certificates and ciphers.
    Raises :class:`TLSConfigError` naming the option that is wrong.
    """
    if not settings.is_ssl:
        if settings.ssl_keyfile:
            raise TLSConfigError("--ssl-keyfile is set but --ssl-certfile is not; both are needed for TLS.")
        return None
    try:
        context = ssl.SSLContext(settings.ssl_version)
    except (ValueError, OSError) as exc:
        raise TLSConfigError(f"--ssl-version {settings.ssl_version} is not usable: {exc}") from None
    # PROTOCOL_TLS_CLIENT turns on hostname checks, which make no sense for a
    # server (and forbid CERT_NONE); PROTOCOL_TLS_SERVER leaves them off.
    context.check_hostname = False
    try:
        context.load_cert_chain(settings.ssl_certfile or "", settings.ssl_keyfile,
                                _password(settings.ssl_keyfile_password))
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(
            f"cannot load --ssl-certfile {settings.ssl_certfile!r} / --ssl-keyfile "
            f"{settings.ssl_keyfile!r}: {exc}"
        ) from None
    try:
        context.verify_mode = ssl.VerifyMode(settings.ssl_cert_reqs)
    except ValueError:
        raise TLSConfigError(
            f"--ssl-cert-reqs {settings.ssl_cert_reqs} is not 0 (none), 1 (optional) or 2 (required)."
        ) from None
    if settings.ssl_ca_certs:
        try:
            context.load_verify_locations(settings.ssl_ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"cannot load --ssl-ca-certs {settings.ssl_ca_certs!r}: {exc}") from None
    if settings.ssl_ciphers:
        try:
            context.set_ciphers(settings.ssl_ciphers)
        except ssl.SSLError as exc:
            raise TLSConfigError(f"--ssl-ciphers {settings.ssl_ciphers!r} selects no cipher: {exc}") from None
    # ALPN: h2 first when HTTP/2 is on (--http zttp --http2), and HTTP/1.1
    # always, so a client offering h2 never has to guess.
    context.set_alpn_protocols(["h2", "http/1.1"] if settings.http2 else ["http/1.1"])
    return context


def _password(value: str | None) -> Callable[[], str]:
    """The key password as a callback, so OpenSSL never prompts on a terminal.

    Called only for an encrypted key; without --ssl-keyfile-password it
    returns "", which fails to decrypt with a clear error instead of blocking
    the master (config check, HUP) or a worker on a passphrase prompt.
    """
    return lambda: value or ""
