"""Blobs behind an fsspec ``s3://`` URL, against moto's S3 server mode (the emulator s3fs's
own tests use), in real processes on both backends; credentials never printed."""

from __future__ import annotations

import json
import socket
import uuid

import pytest

import durablenb as dnb
from durablenb.engine import runtime

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

SECRET = "s3cr3t-Key-never-shown"


@pytest.fixture
def s3(monkeypatch):
    """A bucket on a local S3 emulator; AWS_* variables point every process at it."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {"AWS_ACCESS_KEY_ID": "durablenb-test", "AWS_SECRET_ACCESS_KEY": SECRET,
                       "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    bucket = f"analysis-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    yield fs, server, f"s3://{bucket}/blobs"
    server.stop()


FRAME = """
import numpy as np, pandas as pd

@dnb.step
def load():
    hit("load")
    rng = np.random.default_rng(3)
    return pd.DataFrame({"delay": rng.random(200_000), "carrier": rng.choice(["AA", "UA"], 200_000)})

@dnb.workflow
def analysis():
    return float(load().delay.sum())

with dnb.workflow_id("s3-analysis"):
    print(json.dumps(analysis()))
"""


def _blobs(fs, url: str) -> list[str]:
    fs.invalidate_cache()
    return [p for p in fs.find(url.removeprefix("s3://")) if "/tmp/" not in p]


def test_blobs_in_s3_are_written_replayed_and_collected(s3, run_child, effects, schema):
    fs, _, url = s3
    env = {"DURABLENB_BLOB_URL": url}
    first = run_child(FRAME, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    stored = _blobs(fs, url)
    assert len(stored) == 1 and f"/blobs/{schema}/" in stored[0]  # one blob, this schema's
    again = run_child(FRAME, env=env)  # a new process replays the step from S3
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert effects.count("load") == 1
    store = dnb.connect(schema=schema, blob_url=url)
    assert SECRET not in repr(store) + repr(store.blobs) + store.blobs.url
    dnb.forget("s3-analysis")
    assert _blobs(fs, url) == []  # forgetting removed the blob nothing holds


def test_an_unreachable_object_store_is_a_storage_error_without_credentials(s3, run_child, effects):
    fs, server, url = s3
    env = {"DURABLENB_BLOB_URL": url, "DURABLENB_RETRY_SECONDS": "1",
           "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}  # fmt: skip
    server.stop()
    out = run_child(FRAME + "", env=env, timeout=180)
    assert out.returncode != 0
    assert "StorageError" in out.stderr or "StoreUnavailableError" in out.stderr, out.stderr[-2000:]
    assert SECRET not in out.stdout + out.stderr
    assert runtime.store().get_workflow("s3-analysis") is None or \
        runtime.store().get_workflow("s3-analysis").status == "running"  # resumable, not failed
