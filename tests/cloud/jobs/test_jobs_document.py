"""The edged job document: what parses, what is refused (naming the key), and which
terminal status an error maps to."""

import copy
import json

import pytest

from edged.cloud.jobs.document import (
    MAX_DOCUMENT_CHARS,
    JobDocument,
    needs_fresh_url,
    parse_document,
    terminal_status,
)
from edged.cloud.jobs.protocol import JobDocumentError
from edged.model.bundle.errors import BundleError

GOOD = {
    "operation": "edged.deploy-model",
    "bundle": {"url": "https://bucket.s3.amazonaws.com/m/7.tar?X-Amz-Signature=ab",
               "sha256": "a" * 64, "size": 123456},
    "model": {"name": "windturbine", "version": 7},
    "options": {"shadow_decisions": 500, "activate": False},
}
V2 = "${aws:iot:s3-presigned-url-v2:https%3A%2F%2Fs3.us-east-1.amazonaws.com%2Fb%2Fm.tar}"
V1 = "${aws:iot:s3-presigned-url:https://s3.amazonaws.com/b/m.tar}"


def with_(path, value):
    document = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    target = document
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return document


def test_good_document():
    document = parse_document(json.dumps(GOOD))
    assert isinstance(document, JobDocument)
    assert document.model.version == 7
    assert document.bundle.size == 123456
    assert document.options.shadow_decisions == 500
    assert document.options.activate is False
    assert document.needs_fresh_url is False
    assert parse_document(GOOD) == document


def test_options_are_optional():
    document = parse_document(with_("options", KeyError))
    assert document.options.activate is True
    assert document.options.shadow_decisions == 0


@pytest.mark.parametrize(("path", "value", "key"), [
    ("operation", "edged.reboot", "operation"),
    ("operation", KeyError, "operation"),
    ("bundle", KeyError, "bundle"),
    ("bundle.url", KeyError, "bundle.url"),
    ("bundle.url", "ftp://host/m.tar", "bundle.url"),
    ("bundle.url", "http://host/m.tar", "bundle.url"),
    ("bundle.url", "https:///nohost", "bundle.url"),
    ("bundle.url", "", "bundle.url"),
    ("bundle.sha256", "A" * 64, "bundle.sha256"),
    ("bundle.sha256", "a" * 63, "bundle.sha256"),
    ("bundle.size", 0, "bundle.size"),
    ("bundle.size", "123", "bundle.size"),
    ("bundle.extra", 1, "bundle.extra"),
    ("model.name", "Wind Turbine", "model.name"),
    ("model.name", ".hidden", "model.name"),
    ("model.version", "7", "model.version"),
    ("model.version", 7.0, "model.version"),
    ("model.version", 0, "model.version"),
    ("model.extra", 1, "model.extra"),
    ("options.activate", 1, "options.activate"),
    ("options.shadow_decisions", -1, "options.shadow_decisions"),
    ("options.shadow_decisions", True, "options.shadow_decisions"),
    ("options.unknown", 1, "options.unknown"),
    ("extra", {}, "extra"),
])
def test_malformed_documents_name_the_key(path, value, key):
    with pytest.raises(JobDocumentError) as caught:
        parse_document(with_(path, value))
    assert caught.value.reason == "malformed"
    assert caught.value.retryable is False
    assert key in str(caught.value)


@pytest.mark.parametrize("text", ["not json", "[]", '"text"', "null"])
def test_a_document_that_is_no_object_is_malformed(text):
    with pytest.raises(JobDocumentError, match="malformed"):
        parse_document(text)


def test_http_only_with_the_explicit_option():
    document = parse_document(with_("options", {"allow_http": True}) | {
        "bundle": {**GOOD["bundle"], "url": "http://127.0.0.1:8080/m.tar"}})
    assert document.bundle.url.startswith("http://")


def compact(document):
    return json.dumps(document, separators=(",", ":"))


def test_size_limit():
    # A dict is measured as compact JSON, the way the service stores a document.
    overhead = len(compact(with_("bundle.url", "https://h/")))
    at_limit = with_("bundle.url", "https://h/" + "x" * (MAX_DOCUMENT_CHARS - overhead))
    text = compact(at_limit)
    assert len(text) == MAX_DOCUMENT_CHARS
    assert parse_document(text).bundle.url == at_limit["bundle"]["url"]
    too_big = with_("bundle.url", at_limit["bundle"]["url"] + "x")
    for form in (too_big, compact(too_big), compact(too_big).encode()):
        with pytest.raises(JobDocumentError) as caught:
            parse_document(form)
        assert caught.value.reason == "too_large"


def test_placeholder_detection():
    assert needs_fresh_url(V2)
    assert needs_fresh_url(V1)
    assert needs_fresh_url(f"prefix{V2}")
    assert not needs_fresh_url(GOOD["bundle"]["url"])
    assert not needs_fresh_url("${aws:iot:s3-presigned-url-upload:https://b/k}")
    document = parse_document(with_("bundle.url", V2))
    assert document.needs_fresh_url


def test_terminal_status():
    assert terminal_status(BundleError("hash_mismatch", "x")) == "REJECTED"
    assert terminal_status(BundleError("not_newer", "x")) == "REJECTED"
    assert terminal_status(JobDocumentError("malformed", "x")) == "REJECTED"
    assert terminal_status(OSError("disk full")) == "FAILED"
    assert terminal_status(ConnectionResetError()) == "FAILED"
    assert terminal_status(TimeoutError()) == "FAILED"
    assert terminal_status(BundleError("truncated", "x", retryable=True)) == "FAILED"
    assert terminal_status(RuntimeError("unexpected")) == "FAILED"
