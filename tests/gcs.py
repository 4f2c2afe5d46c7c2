"""A real GCS emulator on loopback, for tests that read or write `gs://`.

    from tests.gcs import gcs  # noqa: F401  (pytest fixture)

    def test_reads_gcs(gcs):
        path = gcs.upload("corpus/a.txt", b"hello\n")   # -> "gs://embedflow-test/corpus/a.txt"
        ...  # Beam's FileSystems, google-cloud-storage: anything that honours the env below

`fake_gcs()` starts, on 127.0.0.1 and free ports, both in threads of this process:

- gcp-storage-emulator's request handler over an in-memory store with one bucket;
  `STORAGE_EMULATOR_HOST` points google-cloud-storage (so Beam's GCS filesystem) at it.
- a fake GCE metadata server serving a fake access token. Beam asks google-auth for
  default credentials before every first GCS access and, finding none, retries with
  backoff for ~20 s, then goes on anonymously; with the fake, google-auth finds
  "Compute Engine" credentials at once. Its request log (`metadata_requests`) shows
  what google-auth asked for.

For the duration it sets the environment (inherited by subprocesses, e.g. Beam's
multi_processing workers) and resets the state that would otherwise leak between
tests: Beam caches its credentials for the whole process (`auth._Credentials`) and
sets a global socket timeout on first use; google-auth reads `GCE_METADATA_HOST`
once, at import. Everything is restored on exit. No traffic leaves loopback.

Only Beam's and google-cloud-storage's GCS access is redirected: TensorFlow's own
`gs://` filesystem (tf.io.gfile, TFRecordDataset) has no endpoint override, so job
outputs that TensorFlow reads must stay local.
"""

import contextlib
import json
import os
import socket
import tempfile
import threading
from functools import partial
from http import HTTPStatus, server

import pytest

BUCKET = "embedflow-test"
PROJECT = "embedflow-fake-project"
SERVICE_ACCOUNT = f"tests@{PROJECT}.iam.gserviceaccount.com"
_HOST = "127.0.0.1"

# What google-auth reads, under _METADATA_ROOT, for Compute Engine credentials.
_METADATA_ROOT = "/computeMetadata/v1/"
_METADATA = {
    "project/project-id": ("text/plain", PROJECT),
    "project/numeric-project-id": ("text/plain", "123456789012"),
    "universe/universe-domain": ("text/plain", "googleapis.com"),
    "instance/service-accounts/default/": ("application/json", json.dumps({
        "aliases": ["default"], "email": SERVICE_ACCOUNT,
        "scopes": ["https://www.googleapis.com/auth/cloud-platform"]})),
    "instance/service-accounts/default/email": ("text/plain", SERVICE_ACCOUNT),
    "instance/service-accounts/default/token": ("application/json", json.dumps({
        "access_token": "fake-access-token", "expires_in": 3600, "token_type": "Bearer"})),
}


class _MetadataHandler(server.BaseHTTPRequestHandler):
    """Answers like the GCE metadata server: `Metadata-Flavor: Google` on every reply."""

    def do_GET(self):  # pylint: disable=invalid-name
        self.server.requests.append(self.path)
        path = self.path.split("?", 1)[0]
        if path == "/":  # google-auth's "am I on GCE?" ping
            self._reply(HTTPStatus.OK, "text/plain", "")
        elif self.headers.get("Metadata-Flavor") != "Google":  # as the real server refuses
            self._reply(HTTPStatus.FORBIDDEN, "text/plain", "Missing Metadata-Flavor header")
        elif path.startswith(_METADATA_ROOT) and path[len(_METADATA_ROOT):] in _METADATA:
            self._reply(HTTPStatus.OK, *_METADATA[path[len(_METADATA_ROOT):]])
        else:
            self._reply(HTTPStatus.NOT_FOUND, "text/plain", "not found")

    def _reply(self, status, content_type, body):
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass  # the request log is `server.requests`


@contextlib.contextmanager
def _serving(httpd):
    """Serves `httpd` (already bound) from a daemon thread until the block exits."""
    # A short poll interval: shutdown() waits up to one interval.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"serve-{httpd.server_address}", daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _emulator_server(bucket):
    """gcp-storage-emulator's handler over an in-memory store, bound to a free port.

    Built from the emulator's parts rather than `create_server(...).start()`: that binds
    inside its thread, so a port it cannot bind hangs `start()` forever, and it cannot
    report which port 0 became. Like the emulator's own server, this one is
    single-threaded: requests are served one at a time.
    """
    # pylint: disable=import-outside-toplevel
    from gcp_storage_emulator.handlers import buckets
    from gcp_storage_emulator.server import RequestHandler
    from gcp_storage_emulator.storage import Storage

    storage = Storage(use_memory_fs=True)
    buckets.create_bucket(bucket, storage)
    return server.HTTPServer((_HOST, 0), partial(RequestHandler, storage))


class FakeGcs:
    """A bucket in the running emulator, with helpers that bypass the code under test.

    Attributes:
      bucket: the bucket's name.
      endpoint: the emulator's URL (the value of STORAGE_EMULATOR_HOST).
      metadata_requests: paths (with query) the fake metadata server was asked for.
    """

    def __init__(self, bucket, endpoint, metadata_requests):
        # pylint: disable=import-outside-toplevel
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        self.bucket, self.endpoint, self.metadata_requests = bucket, endpoint, metadata_requests
        # An explicit endpoint and anonymous credentials: independent of the environment.
        self._client = storage.Client(project=PROJECT, credentials=AnonymousCredentials(),
                                      client_options={"api_endpoint": endpoint})
        self._bucket = self._client.bucket(bucket)

    def url(self, name=""):
        """`gs://BUCKET/name`."""
        return f"gs://{self.bucket}/{name}"

    def upload(self, name, data):
        """Stores bytes (or str, as UTF-8) as object `name`. Returns its gs:// URL."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        self._bucket.blob(name).upload_from_string(data, content_type="application/octet-stream")
        return self.url(name)

    def upload_file(self, local_path, name=None):
        """Copies a local file, byte for byte, to object `name` (default: its base name).

        Returns its gs:// URL.
        """
        name = name if name is not None else os.path.basename(local_path)
        self._bucket.blob(name).upload_from_filename(local_path,
                                                     content_type="application/octet-stream")
        return self.url(name)

    def list(self, prefix=""):
        """Object names under `prefix`, sorted."""
        return sorted(b.name for b in self._client.list_blobs(self.bucket, prefix=prefix))

    def download(self, name):
        """The bytes of object `name`, as stored (never decompressed)."""
        return self._bucket.blob(name).download_as_bytes(raw_download=True)


def _reset_beam_credentials(monkeypatch):
    """Makes Beam look its credentials up again now, and forget them on exit."""
    from apache_beam.internal.gcp import auth  # pylint: disable=import-outside-toplevel

    monkeypatch.setattr(auth._Credentials, "_credentials_init", False)  # pylint: disable=protected-access
    monkeypatch.setattr(auth._Credentials, "_credentials", None)  # pylint: disable=protected-access


@contextlib.contextmanager
def fake_gcs(bucket=BUCKET):
    """Runs the emulator and the fake metadata server; yields a `FakeGcs`.

    Usable from a fixture of any scope; the `gcs` fixture is the function-scoped one.
    """
    # pylint: disable=import-outside-toplevel
    from google.auth.compute_engine import _metadata

    metadata = server.ThreadingHTTPServer((_HOST, 0), _MetadataHandler)
    metadata.requests = []
    with _serving(_emulator_server(bucket)) as emulator, _serving(metadata), \
            tempfile.TemporaryDirectory(prefix="gcloud-config-") as gcloud_config, \
            pytest.MonkeyPatch.context() as mp:
        endpoint = f"http://{_HOST}:{emulator.server_address[1]}"
        metadata_host = f"{_HOST}:{metadata.server_address[1]}"
        # Nothing but the fakes may provide credentials: no key file, no gcloud login.
        for name in ("GOOGLE_APPLICATION_CREDENTIALS", "NO_GCE_CHECK", "GCE_METADATA_ROOT",
                     "GOOGLE_API_USE_CLIENT_CERTIFICATE", "API_ENDPOINT_OVERRIDE"):
            mp.delenv(name, raising=False)
        mp.setenv("CLOUDSDK_CONFIG", gcloud_config)
        mp.setenv("STORAGE_EMULATOR_HOST", endpoint)
        mp.setenv("GCE_METADATA_HOST", metadata_host)  # token, project id, ...
        mp.setenv("GCE_METADATA_IP", metadata_host)  # the "on GCE?" ping
        mp.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
        # Loopback never goes through a proxy.
        for name in ("NO_PROXY", "no_proxy"):
            mp.setenv(name, ",".join(filter(None, [os.environ.get(name), _HOST, "localhost"])))
        # google-auth read these at import, perhaps before this ran.
        mp.setattr(_metadata, "_GCE_METADATA_HOST", metadata_host)
        mp.setattr(_metadata, "_NO_GCE_CHECK", False)
        _reset_beam_credentials(mp)
        timeout = socket.getdefaulttimeout()  # Beam sets 60 s on its first credentials lookup
        try:
            yield FakeGcs(bucket, endpoint, metadata.requests)
        finally:
            socket.setdefaulttimeout(timeout)


@pytest.fixture
def gcs():
    """A fresh, empty `FakeGcs` bucket (see the module docstring)."""
    with fake_gcs() as fake:
        yield fake
