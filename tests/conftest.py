"""pytest setup shared by every test module.

A process that ran a tf.Transform pipeline can crash at interpreter exit inside
protobuf's upb garbage collection (protocolbuffers/protobuf#22067) even after every
test passed, so the session ends through os._exit with pytest's real status.
"""

import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

_STATUS = {}


def pytest_sessionfinish(session, exitstatus):
    _STATUS["code"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if "code" in _STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_STATUS["code"])  # pylint: disable=protected-access
