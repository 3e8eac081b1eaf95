"""HTTP servers a test takes down and brings back: S3 (moto) and bundle downloads.

``S3Server`` serves moto's S3-compatible API on a loopback port the test can take down
and bring back (see its docstring). ``BundleServer`` serves files over HTTP with Range and
the faults a download meets (cuts, stalls, 5xx, expired URLs, oversized bodies).
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from tests.support.brokers import free_port, wait_for_port


class S3Server:
    """moto's S3-compatible server, reached at ``endpoint_url`` on 127.0.0.1:``port``.

    moto serves on a private port in this process; ``port`` is a forwarder the test
    controls. ``stop()`` closes the listener and every open connection, so the endpoint
    is unreachable (connections refused) while buckets and objects stay, and ``start()``
    serves the same port again: an S3 endpoint that went away and came back, without
    boto3's pooled keep-alive connections slipping past the outage. moto keeps its state
    per process: use a fresh bucket per test (``create_bucket()`` names one)::

        with S3Server() as s3:
            bucket = s3.create_bucket()
            ...  # point boto3 at s3.endpoint_url with S3Server.CREDENTIALS
    """

    #: moto accepts any credentials; boto3 wants some to sign with.
    CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._moto = None
        self._backend_port = 0
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self):
        """A boto3 S3 client for this endpoint (path-style, test credentials)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"}))

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"edged-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``: key -> body."""
        client = self.client()
        found: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                      Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = client.get_object(Bucket=bucket,
                                                       Key=item["Key"])["Body"].read()
        return found

    def start(self) -> None:
        if self._moto is None:
            from moto.server import ThreadedMotoServer

            # werkzeug logs every request moto serves; the tests' own output is enough.
            logging.getLogger("werkzeug").setLevel(logging.WARNING)

            self._backend_port = free_port()
            self._moto = ThreadedMotoServer(ip_address=self.host, port=self._backend_port,
                                            verbose=False)
            self._moto.start()
            wait_for_port(self._backend_port)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        self._stopping.clear()
        self._accepting = threading.Thread(target=self._accept, name=f"s3-forward-{self.port}",
                                           daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection((self.host, self._backend_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Take the endpoint down: refuse new connections, cut the open ones."""
        self._stopping.set()
        if self._accepting is not None:
            self._accepting.join()
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            connections, self._connections = self._connections, set()
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        """Stop the endpoint and moto's server."""
        self.stop()
        if self._moto is not None:
            self._moto.stop()
            # ThreadedMotoServer.stop() leaves its listening socket open.
            server = getattr(self._moto, "_server", None)
            if server is not None:
                server.server_close()
            self._moto = None

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _BundleHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        with contextlib.suppress(ConnectionError):  # a client that hung up or was cut
            self.server.bundles._serve(self)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        pass  # BundleServer.requests records what a test needs


class BundleServer:
    """Bundle files over HTTP/1.1 on 127.0.0.1, with the faults a download must survive::

        with BundleServer({"b.tar.gz": data}) as server:
            await fetch_bundle(server.url("b.tar.gz"), ...)

    ``files`` (name -> bytes) may change while it runs. Files are served by path, the
    query string ignored; ``valid(full_url)`` returning False answers 403 with S3's
    "Request has expired" body (``tests.support.jobs_peer.Presigner.valid`` fits). ``Range:
    bytes=N-`` is answered 206 with Content-Range, or 416 past the end; ``tls`` (a server
    ``ssl.SSLContext``) serves https. Faults, each an attribute a test sets:

    - ``cut_after=N``: headers, N body bytes, then the connection closes; for the next
      ``cut_times`` file responses (default 1), then off again;
    - ``stall_after=N``: N body bytes, then the connection hangs until ``close()``;
    - ``status_override=503``: that status, no body, for the next ``status_times`` requests;
    - ``ignore_range``: 200 and the whole file whatever the Range;
    - ``extra_bytes=N``: N junk bytes after the file, sent without Content-Length;
    - ``redirects``: path -> Location, answered 302.

    ``requests`` records ``{"path", "range", "status"}`` per request, in order.
    """

    EXPIRED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
               b"<Message>Request has expired</Message></Error>")

    def __init__(self, files: dict[str, bytes] | None = None, *,
                 valid: Callable[[str], bool] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.files = dict(files or {})
        self.valid = valid
        self.cut_after: int | None = None
        self.cut_times = 1
        self.stall_after: int | None = None
        self.status_override: int | None = None
        self.status_times = 1
        self.ignore_range = False
        self.extra_bytes = 0
        self.redirects: dict[str, str] = {}
        self.requests: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BundleHandler)
        self._server.daemon_threads = True
        self._server.bundles = self  # type: ignore[attr-defined]
        if tls is not None:  # https: a server-side context with a certificate loaded
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True, name=f"bundle-server-{self.port}")

    def url(self, name: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{name}"

    def _serve(self, request: _BundleHandler) -> None:
        path = urlsplit(request.path).path
        name = unquote(path.lstrip("/"))
        with self._lock:
            status = self.status_override
            if status is not None:
                self.status_times -= 1
                if self.status_times <= 0:
                    self.status_override, self.status_times = None, 1
        record = {"path": path, "range": request.headers.get("Range"), "status": status}
        if status is not None:
            self._send(request, record, status)
        elif path in self.redirects:
            self._send(request, record, 302, headers={"Location": self.redirects[path]})
        elif self.valid is not None and not self.valid(
                f"{self.scheme}://127.0.0.1:{self.port}{request.path}"):
            self._send(request, record, 403, self.EXPIRED)
        elif name not in self.files:
            self._send(request, record, 404)
        else:
            self._send_file(request, record, self.files[name])

    def _send_file(self, request: _BundleHandler, record: dict[str, object],
                   data: bytes) -> None:
        found = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range") or "")
        if not found or self.ignore_range:
            status, body, headers = 200, data, {}
        elif int(found[1]) >= len(data):
            self._send(request, record, 416, headers={"Content-Range": f"bytes */{len(data)}"})
            return
        else:
            first = int(found[1])
            last = min(int(found[2] or len(data) - 1), len(data) - 1)
            status, body = 206, data[first:last + 1]
            headers = {"Content-Range": f"bytes {first}-{last}/{len(data)}"}
        with self._lock:
            cut = self.cut_after
            if cut is not None:
                self.cut_times -= 1
                if self.cut_times <= 0:
                    self.cut_after, self.cut_times = None, 1
        stall = self.stall_after
        self._send(request, record, status, body + b"x" * self.extra_bytes, headers,
                   length=not self.extra_bytes, limit=cut if cut is not None else stall)
        if cut is None and stall is not None:
            self._closing.wait(60)
        if cut is not None or stall is not None:
            request.close_connection = True

    def _send(self, request: _BundleHandler, record: dict[str, object], status: int,
              body: bytes = b"", headers: dict[str, str] | None = None, *,
              length: bool = True, limit: int | None = None) -> None:
        record["status"] = status
        self.requests.append(record)
        request.send_response(status)
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        # Without a length the body ends when the connection closes.
        request.send_header(*("Content-Length", str(len(body))) if length else
                            ("Connection", "close"))
        request.end_headers()
        request.wfile.write(body if limit is None else body[:limit])
        request.wfile.flush()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> BundleServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
