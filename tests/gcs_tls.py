"""TensorFlow's own gs:// filesystem against the GCS emulator of tests/gcs.py.

TensorFlow's GCS filesystem has no endpoint override: it always calls
https://www.googleapis.com (and https://storage.googleapis.com). It does honour
`https_proxy`, `CURL_CA_BUNDLE` and `GOOGLE_AUTH_TOKEN_FOR_TESTING`, so `tls_proxy()`
runs, on 127.0.0.1, an HTTPS proxy that accepts CONNECT, terminates TLS with a
certificate for those hosts signed by a throw-away test CA, and forwards each request
to the emulator over plain HTTP. It smooths over what the emulator does not take from
TensorFlow:

- resumable upload chunks arrive chunked *and* with a Content-Length: the body is
  de-chunked and sent with its real length;
- a directory is created as an empty media upload: it is sent with Content-Length 0;
- TensorFlow 2.21's rename first asks GET /storage/v1/b/BUCKET/storageLayout: answered
  here (a flat, non-hierarchical bucket);
- requests reach the emulator with its own address as Host, so the links it stores
  (mediaLink) stay reachable by google-cloud-storage; the resumable-upload Location it
  returns is rewritten back to https://www.googleapis.com, so the next chunk comes
  through this proxy.

Nothing leaves loopback: the proxy only ever connects to the emulator.
"""

import contextlib
import datetime
import http.client
import json
import os
import re
import socket
import ssl
import tempfile
import threading
from http import server
from urllib.parse import parse_qs, urlparse

_HOST = "127.0.0.1"
_NAMES = ("www.googleapis.com", "storage.googleapis.com", "oauth2.googleapis.com")


def _test_ca_and_certificate(directory):
    """Writes ca.pem and a server cert/key for _NAMES signed by it. Returns the paths."""
    # pylint: disable=import-outside-toplevel
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "embedflow test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _NAMES[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in _NAMES]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {name: os.path.join(directory, name) for name in ("ca.pem", "cert.pem", "key.pem")}
    with open(paths["ca.pem"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert.pem"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key.pem"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


def _read_chunked(rfile):
    body = b""
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline().strip():  # trailers
                pass
            return body
        body += rfile.read(size)
        rfile.readline()


def _as_multipart(path):
    """An empty media upload (a directory marker) as the multipart upload the emulator takes."""
    query = parse_qs(urlparse(path).query)
    boundary = "embedflow-empty-object"
    body = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
            f"{json.dumps({'name': query['name'][0]})}\r\n--{boundary}\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n\r\n--{boundary}--\r\n").encode()
    return (path.replace("uploadType=media", "uploadType=multipart"), body,
            f"multipart/related; boundary={boundary}")


class _ForwardHandler(server.BaseHTTPRequestHandler):
    """Requests arriving inside the TLS tunnel, forwarded to the emulator."""

    protocol_version = "HTTP/1.1"
    emulator = None  # (host, port), set per server
    requests = None  # list of "METHOD path" seen

    def _body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return _read_chunked(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self):
        body = self._body()
        self.requests.append(f"{self.command} {self.path}")
        layout = re.fullmatch(r"/storage/v1/b/([^/?]+)/storageLayout(\?.*)?", self.path)
        if layout and self.command == "GET":
            self._reply(200, {"Content-Type": "application/json"}, json.dumps({
                "kind": "storage#storageLayout", "bucket": layout.group(1), "location": "US",
                "locationType": "multi-region", "hierarchicalNamespace": {"enabled": False}}).encode())
            return
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("transfer-encoding", "content-length", "connection", "proxy-connection",
                                        "host")}
        # The emulator builds the URLs it stores (mediaLink) and returns (Location) from
        # Host: its own address keeps stored links reachable by google-cloud-storage.
        emulator_url = f"http://{self.emulator[0]}:{self.emulator[1]}"
        headers["Host"] = f"{self.emulator[0]}:{self.emulator[1]}"
        path = self.path
        if not body and self.command == "POST" and "uploadType=media" in path:
            path, body, headers["Content-Type"] = _as_multipart(path)
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*self.emulator, timeout=60)
        try:
            conn.request(self.command, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            out = {k: v for k, v in response.getheaders()
                   if k.lower() not in ("transfer-encoding", "content-length", "connection")}
        finally:
            conn.close()
        for k, v in list(out.items()):
            if k.lower() == "location" and v.startswith(emulator_url):
                out[k] = "https://" + self.headers.get("Host", "www.googleapis.com") + v[len(emulator_url):]
        self._reply(response.status, out, data)

    def _reply(self, status, headers, data):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward  # noqa: N815

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass


class _ProxyHandler(server.BaseHTTPRequestHandler):
    """CONNECT host:443 -> a TLS tunnel whose requests _ForwardHandler serves."""

    protocol_version = "HTTP/1.1"

    def do_CONNECT(self):  # pylint: disable=invalid-name
        host = self.path.split(":")[0]
        if host not in _NAMES:
            self.send_error(403, f"this test proxy only serves {', '.join(_NAMES)}")
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        tls = self.server.tls_context.wrap_socket(self.connection, server_side=True)
        forward = type("Forward", (_ForwardHandler,), {"emulator": self.server.emulator,
                                                        "requests": self.server.requests})
        try:
            forward(tls, self.client_address, self.server)
        except (ssl.SSLError, ConnectionError, socket.timeout):
            pass
        self.close_connection = True

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass


@contextlib.contextmanager
def tls_proxy(emulator_endpoint, monkeypatch):
    """Points TensorFlow's gs:// filesystem at the emulator through the proxy.

    Sets https_proxy, CURL_CA_BUNDLE and GOOGLE_AUTH_TOKEN_FOR_TESTING with `monkeypatch`
    (so subprocesses inherit them). TensorFlow reads them when its GCS filesystem is
    first used in a process: run TensorFlow's gs:// work in a subprocess.

    Yields:
      the list of "METHOD path" requests the proxy forwarded.
    """
    emulator = urlparse(emulator_endpoint)
    with tempfile.TemporaryDirectory(prefix="tls-proxy-") as directory:
        paths = _test_ca_and_certificate(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(paths["cert.pem"], paths["key.pem"])
        proxy = server.ThreadingHTTPServer((_HOST, 0), _ProxyHandler)
        proxy.daemon_threads = True
        proxy.tls_context, proxy.emulator, proxy.requests = context, (emulator.hostname, emulator.port), []
        thread = threading.Thread(target=proxy.serve_forever, daemon=True)
        thread.start()
        url = f"http://{_HOST}:{proxy.server_address[1]}"
        for name in ("https_proxy", "HTTPS_PROXY"):
            monkeypatch.setenv(name, url)
        monkeypatch.setenv("CURL_CA_BUNDLE", paths["ca.pem"])
        monkeypatch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "fake-access-token")
        try:
            yield proxy.requests
        finally:
            proxy.shutdown()
            proxy.server_close()
            thread.join(timeout=5)
