"""Reading a stored result: msgspec for the JSON it reads, Python's decoder for what only Python writes (NaN)."""

from __future__ import annotations

import json
import math

import pytest

from shared.celery_app import app
from shared.state import decode

META = {"status": "SUCCESS", "result": {"result": {"latency_ms_p50": 2.5, "extra": {"note": "x"}}, "worker": "w"}}


@pytest.mark.parametrize("columns", [None, ("latency_ms_p50",)])
def test_a_stored_result_reads_the_same_as_with_pythons_decoder(columns):
    payload = json.dumps(META).encode()
    row = decode(app.backend, payload, columns)["result"]["result"]
    assert row == (META["result"]["result"] if columns is None else {"latency_ms_p50": 2.5})


@pytest.mark.parametrize("columns", [None, ("latency_ms_p50",)])
def test_nan_that_pythons_json_encoder_wrote_is_read_not_refused(columns):
    meta = {**META, "result": {"result": {"latency_ms_p50": 2.5, "extra": {"spread": math.nan}}}}
    payload = json.dumps(meta).encode()  # `NaN`: not JSON, which msgspec refuses
    row = decode(app.backend, payload, columns)["result"]["result"]
    assert row["latency_ms_p50"] == 2.5 and math.isnan(row["extra"]["spread"])


def test_a_run_never_stored_is_pending():
    assert decode(app.backend, None) == {"status": "PENDING"}
