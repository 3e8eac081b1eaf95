"""The one TLS and HTTP(S) client set-up: every HTTPS client and the MQTT link use it.

:func:`tls_context` makes the :class:`ssl.SSLContext` from the settings every client
has some of (a CA bundle instead of the system's, a client certificate and key for
mutual TLS, whether to check the host name or the certificate at all) with TLS 1.2 as
the floor. :class:`Connection` is one HTTP(S) connection to a URL's origin with a
timeout on every socket operation; :func:`request` sends one request on a fresh one
and reads a bounded reply. The bundle download streams on a :class:`Connection` (it
needs the socket, to stop a worker thread at once); the webhook, the credentials
provider and the pre-signed PUT use :func:`request`.

Built on ``http.client``, the standard library, so the device install needs no HTTP
package. Redirects are never followed here: a caller that follows them decides how
(the download keeps its Range, and refuses https to http). ``proxy=True`` goes through
the proxy the environment names (``https_proxy``, ``http_proxy``, ``no_proxy``), as
urllib would: a CONNECT tunnel for https, the whole URL as the target for http. Each
caller says whether it does (see the callers for why theirs does or does not).
"""

from __future__ import annotations

import base64
import http.client
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

#: The oldest TLS any client here speaks (Python's default too, held here on purpose).
MIN_TLS = ssl.TLSVersion.TLSv1_2


def tls_context(*, ca_file: Path | str | None = None, cert_file: Path | str | None = None,
                key_file: Path | str | None = None, check_hostname: bool = True,
                verify: bool = True) -> ssl.SSLContext:
    """A client context. (Blocking: reads the files; raises ``OSError`` or
    ``ssl.SSLError`` when one cannot be loaded.)

    ``ca_file``: the CAs to trust instead of the system's. ``cert_file``/``key_file``:
    the client's certificate (mutual TLS). ``check_hostname=False`` still checks the
    certificate, not that it names the host; ``verify=False`` checks nothing."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = MIN_TLS
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    if not verify or not check_hostname:
        context.check_hostname = False
    if not verify:
        context.verify_mode = ssl.CERT_NONE
    return context


class Connection:
    """One connection to the origin of ``url`` (made at the first request); a context
    manager that closes it. ``tls`` is used for an https URL (default: the system's
    CAs); ``timeout_s`` bounds the connect and every read and write."""

    def __init__(self, url: str, *, timeout_s: float, proxy: bool,
                 tls: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL with a host")
        via = _proxy_for(parts) if proxy else None
        host, port = (parts.hostname, parts.port) if via is None else _proxy_address(via)
        if parts.scheme == "https":
            self.http: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=timeout_s,
                context=tls if tls is not None else tls_context())
        else:
            self.http = http.client.HTTPConnection(host, port, timeout=timeout_s)
        # Sent as given: a pre-signed URL's signature covers its exact path and query.
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers: dict[str, str] = {}
        if via is not None:
            auth = _proxy_authorization(via)
            if parts.scheme == "https":  # the proxy sees only the tunnel's CONNECT
                self.http.set_tunnel(parts.hostname, parts.port, headers=auth)
            else:
                self.target = urlunsplit(parts._replace(fragment=""))
                self._headers = auth

    def request(self, method: str, *, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> http.client.HTTPResponse:
        """Send one request; the response, its body unread. Raises ``OSError`` (TLS
        errors and timeouts included) or ``http.client.HTTPException``."""
        self.http.request(method, self.target, body=body,
                          headers={**self._headers, **(headers or {})})
        return self.http.getresponse()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True)
class Reply:
    """An answer of :func:`request`: any status, ``body`` at most what was asked."""

    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes


def request(method: str, url: str, *, timeout_s: float, proxy: bool,
            tls: ssl.SSLContext | None = None, headers: dict[str, str] | None = None,
            body: bytes | None = None, max_reply_bytes: int = 64 * 1024) -> Reply:
    """(Blocking.) One request on a fresh :class:`Connection`, redirects not followed;
    the reply with up to ``max_reply_bytes`` of its body, whatever its status. Raises
    what :meth:`Connection.request` raises, and ``ValueError`` for a URL that is not
    http(s)."""
    with Connection(url, timeout_s=timeout_s, proxy=proxy, tls=tls) as connection:
        response = connection.request(method, headers=headers, body=body)
        return Reply(response.status, response.reason, response.headers,
                     response.read(max_reply_bytes))


def _proxy_for(parts: SplitResult) -> SplitResult | None:
    """The environment's proxy for this URL (urllib's rules), or None."""
    proxy = urllib.request.getproxies().get(parts.scheme)
    host = parts.netloc.rpartition("@")[2]
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    return urlsplit(proxy if "://" in proxy else f"http://{proxy}")


def _proxy_address(proxy: SplitResult) -> tuple[str, int]:
    if not proxy.hostname:
        raise ValueError("the proxy in the environment has no host")
    return proxy.hostname, proxy.port or (443 if proxy.scheme == "https" else 80)


def _proxy_authorization(proxy: SplitResult) -> dict[str, str]:
    if not proxy.username or not proxy.password:  # urllib sends none without both
        return {}
    user_pass = f"{unquote(proxy.username)}:{unquote(proxy.password)}"
    return {"Proxy-Authorization": "Basic " + base64.b64encode(user_pass.encode()).decode()}


__all__ = ["MIN_TLS", "Connection", "Reply", "request", "tls_context"]
