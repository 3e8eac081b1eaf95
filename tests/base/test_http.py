"""The one TLS and HTTP(S) set-up: contexts from the TLS settings, one request, proxies."""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest

from edged.base.http import MIN_TLS, Connection, request, tls_context
from tests.support import make_pki


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers ``server.status`` (a Location too for a 3xx) and records each request."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        peer = self.connection.getpeercert() if isinstance(self.connection,
                                                           ssl.SSLSocket) else None
        self.server.seen.append({"method": self.command, "target": self.path,
                                 "headers": dict(self.headers), "peer": peer,
                                 "body": self.rfile.read(length)})
        body = self.server.body
        self.send_response(self.server.status)
        if 300 <= self.server.status < 400:
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(tls: ssl.SSLContext | None = None, host: str = "127.0.0.1", *,
            status: int = 200, body: bytes = b"ok") -> Iterator[http.server.HTTPServer]:
    server = http.server.ThreadingHTTPServer((host, 0), _Handler)
    server.seen, server.status, server.body = [], status, body
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def url_of(server: http.server.HTTPServer, path: str = "/x?q=1", host: str = "") -> str:
    scheme = "https" if isinstance(server.socket, ssl.SSLSocket) else "http"
    return f"{scheme}://{host or '127.0.0.1'}:{server.server_address[1]}{path}"


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


def server_context(pki, *, client_certs: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if client_certs:
        context.load_verify_locations(pki.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.fixture(autouse=True)
def no_proxy_in_the_environment(monkeypatch):
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


# -- the TLS context -----------------------------------------------------------------------


def test_a_default_context_verifies_everything_from_tls_1_2():
    context = tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == MIN_TLS == ssl.TLSVersion.TLSv1_2


def test_no_hostname_check_still_verifies_the_certificate():
    context = tls_context(check_hostname=False)
    assert not context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    unverified = tls_context(verify=False)
    assert not unverified.check_hostname and unverified.verify_mode == ssl.CERT_NONE


def test_missing_files_raise_os_errors(tmp_path):
    with pytest.raises(OSError):
        tls_context(ca_file=tmp_path / "none.pem")
    with pytest.raises(OSError):
        tls_context(cert_file=tmp_path / "none.pem", key_file=tmp_path / "none.key")


def test_https_trusts_ca_file_instead_of_the_system(pki):
    with serving(server_context(pki)) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            request("GET", url_of(server), timeout_s=5, proxy=False)
        reply = request("GET", url_of(server), timeout_s=5, proxy=False,
                        tls=tls_context(ca_file=pki.ca_file))
    assert (reply.status, reply.body) == (200, b"ok")


def test_the_host_name_is_checked_unless_told_not_to(pki):
    # The certificate names localhost and 127.0.0.1, not 127.0.0.2.
    with serving(server_context(pki), host="0.0.0.0") as server:
        url = url_of(server, host="127.0.0.2")
        with pytest.raises(ssl.SSLCertVerificationError, match="match"):
            request("GET", url, timeout_s=5, proxy=False,
                    tls=tls_context(ca_file=pki.ca_file))
        reply = request("GET", url, timeout_s=5, proxy=False,
                        tls=tls_context(ca_file=pki.ca_file, check_hostname=False))
    assert reply.status == 200


def test_mutual_tls_presents_the_client_certificate(pki):
    cert, key = pki.client("thing-7")
    with serving(server_context(pki, client_certs=True)) as server:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            request("GET", url_of(server), timeout_s=5, proxy=False,
                    tls=tls_context(ca_file=pki.ca_file))
        reply = request("GET", url_of(server), timeout_s=5, proxy=False,
                        tls=tls_context(ca_file=pki.ca_file, cert_file=cert, key_file=key))
    assert reply.status == 200
    subject = dict(item for rdn in server.seen[-1]["peer"]["subject"] for item in rdn)
    assert subject["commonName"] == "thing-7"


# -- one request ---------------------------------------------------------------------------


def test_a_request_sends_its_target_headers_and_body_as_given():
    with serving() as server:
        reply = request("PUT", url_of(server, "/a%2Fb?X-Amz-Signature=s&x=1"), timeout_s=5,
                        proxy=False, headers={"Content-MD5": "abc"}, body=b"data")
    (seen,) = server.seen
    assert (seen["method"], seen["target"], seen["body"]) == (
        "PUT", "/a%2Fb?X-Amz-Signature=s&x=1", b"data")
    assert seen["headers"]["Content-MD5"] == "abc" and reply.status == 200


def test_redirects_and_errors_are_answers_not_exceptions():
    with serving(status=302) as server:
        reply = request("POST", url_of(server), timeout_s=5, proxy=False, body=b"{}")
    assert reply.status == 302 and reply.headers["Location"] == "/elsewhere"
    assert len(server.seen) == 1, "not followed"
    with serving(status=503, body=b"busy") as server:
        reply = request("GET", url_of(server), timeout_s=5, proxy=False)
    assert (reply.status, reply.reason, reply.body) == (503, "Service Unavailable", b"busy")


def test_the_reply_body_is_read_only_up_to_the_bound():
    with serving(body=b"x" * 10_000) as server:
        reply = request("GET", url_of(server), timeout_s=5, proxy=False, max_reply_bytes=100)
    assert reply.body == b"x" * 100


def test_a_silent_server_times_out():
    with socket.create_server(("127.0.0.1", 0)) as silent:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            request("GET", f"http://127.0.0.1:{silent.getsockname()[1]}/", timeout_s=0.3,
                    proxy=False)
    assert time.monotonic() - started < 3


def test_only_http_urls_are_taken():
    with pytest.raises(ValueError):
        Connection("ftp://example.com/x", timeout_s=1, proxy=False)


# -- proxies -------------------------------------------------------------------------------


class _Proxy:
    """A proxy that records what it is asked and tunnels CONNECTs to where they say;
    a plain request is answered by the proxy itself (200, ``proxied``)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.asked: list[tuple[str, dict[str, str]]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                head += client.recv(4096)
            line, *fields = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
            headers = dict(field.split(": ", 1) for field in fields)
            self.asked.append((line, headers))
            method, target, _ = line.split(" ")
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nproxied")
                return
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host, int(port))) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
                _pump(client, upstream)

    def close(self) -> None:
        with suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for side in (source, sink):
        with suppress(OSError):
            side.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy():
    running = _Proxy()
    yield running
    running.close()


def test_http_goes_through_the_environments_proxy_with_its_credentials(proxy, monkeypatch):
    monkeypatch.setenv("http_proxy", f"http://us%40r:p%3Ass@127.0.0.1:{proxy.port}")
    reply = request("GET", "http://origin.example:8080/p?q=1", timeout_s=5, proxy=True)
    assert reply.body == b"proxied"
    ((line, headers),) = proxy.asked
    assert line == "GET http://origin.example:8080/p?q=1 HTTP/1.1"
    assert headers["Proxy-Authorization"] == "Basic dXNAcjpwOnNz"  # us@r:p:ss


def test_https_is_tunnelled_and_the_credentials_stay_with_the_proxy(pki, proxy, monkeypatch):
    monkeypatch.setenv("https_proxy", f"http://u:p@127.0.0.1:{proxy.port}")
    with serving(server_context(pki)) as server:
        reply = request("GET", url_of(server, host="localhost"), timeout_s=5, proxy=True,
                        tls=tls_context(ca_file=pki.ca_file))
    assert reply.status == 200
    ((line, headers),) = proxy.asked
    assert line == f"CONNECT localhost:{server.server_address[1]} HTTP/1.0"
    assert headers["Proxy-Authorization"].startswith("Basic ")
    assert "Proxy-Authorization" not in server.seen[0]["headers"]


def test_no_proxy_and_proxy_false_go_direct(proxy, monkeypatch):
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
    with serving() as server:
        assert request("GET", url_of(server), timeout_s=5, proxy=False).body == b"ok"
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        assert request("GET", url_of(server), timeout_s=5, proxy=True).body == b"ok"
    assert proxy.asked == []
