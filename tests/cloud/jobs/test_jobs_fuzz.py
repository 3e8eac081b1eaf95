"""The jobs decoders under Hypothesis: a job document (text or as a reply carries it) and
every reply parser give a value or edged's own typed rejection, never another exception."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.cloud.jobs import protocol
from edged.cloud.jobs.document import JobDocument, document_of, parse_document
from edged.cloud.jobs.protocol import JobDocumentError, JobsProtocolError

pytestmark = pytest.mark.fuzz

THING = "turbine-7"
GOOD = {"operation": "edged.deploy-model",
        "bundle": {"url": "https://bundles.example.com/w.tar.gz", "sha256": "a" * 64,
                   "size": 1234},
        "model": {"name": "windturbine", "version": 2},
        "options": {"shadow_decisions": 0, "activate": True}}
REPLY = {"clientToken": "tok", "timestamp": 1,
         "execution": {"jobId": "job-1", "thingName": THING, "status": "IN_PROGRESS",
                       "statusDetails": {"phase": "received"}, "versionNumber": 2,
                       "executionNumber": 1, "jobDocument": GOOD}}

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSONISH = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4)
                       | st.dictionaries(st.text(max_size=12), c, max_size=4), max_leaves=20)


def _mutations(base: dict) -> st.SearchStrategy[str]:
    """``base`` as JSON with a few characters replaced, dropped or repeated: near-valid
    text reaches far deeper into a decoder than noise does."""
    text = json.dumps(base)

    @st.composite
    def mutate(draw) -> str:
        out = text
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(out)))
            op = draw(st.sampled_from(["replace", "drop", "insert", "repeat"]))
            piece = draw(st.sampled_from(list('{}[]",:0-e.\\ ') + ['"a":', "null", "1e400"]))
            if op == "replace":
                out = out[:at] + piece + out[at + 1:]
            elif op == "drop":
                out = out[:at] + out[at + 1:]
            elif op == "insert":
                out = out[:at] + piece + out[at:]
            else:  # a span written twice, keys included
                end = draw(st.integers(at, min(len(out), at + 60)))
                out = out[:end] + "," + out[at:end] + out[end:]
        return out

    return mutate()


def _document_or_rejection(document) -> None:
    try:
        assert isinstance(parse_document(document), JobDocument)
    except JobDocumentError as exc:
        assert exc.reason in JobDocumentError.REASONS and not exc.retryable


@given(st.one_of(st.text(max_size=400), st.binary(max_size=200), _mutations(GOOD)))
def test_a_job_document_text_is_a_document_or_rejected(text):
    _document_or_rejection(text)


@given(st.one_of(JSONISH, st.fixed_dictionaries(
    {}, optional={k: JSONISH for k in ("operation", "bundle", "model", "options")})))
def test_a_job_document_object_is_a_document_or_rejected(document):
    _document_or_rejection(document)


def _reply_or_protocol_error(parse, payload) -> object | None:
    try:
        return parse(payload)
    except JobsProtocolError:
        return None


@given(st.one_of(st.text(max_size=300), st.binary(max_size=200), _mutations(REPLY),
                 JSONISH.map(json.dumps)))
def test_every_reply_parser_gives_a_reply_or_a_protocol_error(payload):
    for parse in (protocol.parse_accepted, protocol.parse_rejected,
                  protocol.parse_notify_next, protocol.parse_notify):
        _reply_or_protocol_error(parse, payload)
    for reply in ("accepted", "rejected"):
        topic = f"$aws/things/{THING}/jobs/start-next/{reply}"
        _reply_or_protocol_error(lambda p, t=topic: protocol.parse_reply(t, p, THING),
                                 payload)
    accepted = _reply_or_protocol_error(protocol.parse_accepted, payload)
    for summary in getattr(accepted, "in_progress", ()) + getattr(accepted, "queued", ()):
        protocol.check_job_id(summary.job_id)  # a listed execution always has a valid id
    execution = getattr(accepted, "execution", None)
    if execution is not None:
        # What the executor does with it: a document, or the job REJECTED.
        with contextlib.suppress(JobDocumentError):
            _document_or_rejection(document_of(execution))
