"""Whatever the executor puts in statusDetails (an exception's text, a document's words,
any str at all, lone surrogates included) goes out as a request AWS takes: the jobs
peer, which checks AWS's rules on its own (keys ``[a-zA-Z0-9:_-]{1,128}``, values of
1-1,024 UTF-16 code units matching ``[^\\p{C}]+``), accepts every update built from it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.cloud.jobs import protocol
from tests.support.jobs_peer import status_details_problem

pytestmark = pytest.mark.fuzz

# Every code point, surrogates and unassigned ones included (Hypothesis leaves out Cs
# unless told not to).
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=1500)
VALUES = st.one_of(ANY_TEXT, st.integers(), st.floats(), st.none(), st.booleans(),
                   st.text(st.sampled_from("\u200b\ufeff\u00ad\u202e\ud800\ue000\x85 a"),
                           max_size=1100))


@given(ANY_TEXT, st.dictionaries(ANY_TEXT, VALUES, max_size=6))
def test_any_status_details_are_accepted_once_clamped(value, others):
    clamped = protocol.clamp_status_details({**others, "detail": value})
    assert "detail" in clamped.details  # a value is never dropped, only made to fit
    payload = protocol.update("job-1", "FAILED", "tok", clamped.details, 3)
    sent = json.loads(payload)["statusDetails"]
    assert status_details_problem(sent) is None, sent
    assert sent == clamped.details
    # Clamping what was clamped changes nothing.
    assert protocol.clamp_status_details(clamped.details).changed == 0
