"""Fuzzing the server against its own OpenAPI description (schemathesis, in-process ASGI, the real hf engine).

Every operation in ``/openapi.json`` gets generated requests, positive (valid by the schema) and negative (each
breaking the schema somewhere), deterministically (fixed Hypothesis seeds). Each response must not be a 5xx, and its
status, content type and body (each event of a stream too) must be what the schema documents. The cases actually
executed are counted. Not checked: that every positive case is accepted (the schema cannot say which bytes decode
as an image, or how long a prompt fits the context), and that every negative one is refused (the request model
coerces as pydantic's lax mode, and vLLM's server, do: ``"stream": 0`` is read as false).

Generating the bodies is most of the cost (schemathesis draws a whole random JSON document per case, 50-100 ms on
2 cores, more as a Hypothesis run grows), so the chat cases run in batches of 100, one seed each. The served
context is 48 tokens and at most 2 choices (server settings, as ``--max-model-len`` is): a valid request generates
at most ~33 tokens of the tiny model (max_tokens defaults to the rest of the context, as in OpenAI's and vLLM's
APIs).
"""

from __future__ import annotations

import time

import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from transformers import AutoProcessor

import onellm  # noqa: F401  (Auto-class registration)
from onellm.serving.app import ServerSettings, build_app
from onellm.serving.engines import EngineSettings
from onellm.serving.hf_engine import HFEngine

pytestmark = pytest.mark.slow

CONTEXT = 48  # tokens; the chat template alone is 15, an image adds 6 placeholders
MAX_N = 2
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
BATCH = 100
# Batches of BATCH cases per operation and generation mode. The GET routes take no input: one case each (Hypothesis
# stops once it has tried every input), and no negative ones (nothing to break).
BATCHES = {
    "POST /v1/chat/completions": {POSITIVE: 6, NEGATIVE: 4},
    "GET /v1/models": {POSITIVE: 1},
    "GET /health": {POSITIVE: 1},
    "GET /metrics": {POSITIVE: 1},
}
MIN_CASES = 1000


@pytest.fixture(scope="module")
def schema(checkpoint):
    engine = HFEngine(EngineSettings(checkpoint=checkpoint, dtype="float32", max_model_len=CONTEXT))
    settings_ = ServerSettings(served_model_name="tiny", request_timeout=30.0, max_n=MAX_N)
    app = build_app(engine, AutoProcessor.from_pretrained(checkpoint), settings_)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # the engine leaves this process's threads alone
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def fuzz(operation, mode: GenerationMode, batch: int) -> int:
    """Run up to BATCH generated cases of ``operation`` from seed ``batch``; returns how many ran."""
    ran = 0

    @seed(batch)
    @settings(
        max_examples=BATCH,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        nonlocal ran
        ran += 1
        case.call_and_validate(checks=CHECKS)

    run()
    return ran


def test_generated_requests_get_no_5xx_and_match_the_schema(schema, capsys):
    started = time.perf_counter()
    counts = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode, batches in BATCHES[operation.label].items():
            counts[f"{operation.label} {mode.value}"] = sum(fuzz(operation, mode, k) for k in range(batches))
    total = sum(counts.values())
    with capsys.disabled():
        print(f"\nschemathesis: {total} cases in {time.perf_counter() - started:.1f} s: {counts}")
    assert set(BATCHES) == {name.rsplit(" ", 1)[0] for name in counts}, "an operation is not fuzzed"
    assert total >= MIN_CASES
