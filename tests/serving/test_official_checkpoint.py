"""The converted official OneLLM fixture checkpoint (issue 13) is served by every engine with the same greedy tokens:
``onellm serve``'s hf engine (the reference) and vllm engine, and vLLM's stock OpenAI server through the plugin, for
an image and an audio request."""

from __future__ import annotations

import sys

import pytest
from greedy_tokens import collect
from official_fixture import AVAILABLE, SKIP_REASON, convert_fixture
from openai import OpenAI

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not AVAILABLE, reason=SKIP_REASON)]
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    folder, _ = convert_fixture(tmp_path_factory.mktemp("official-serving"))
    return folder


def requests(media, parts) -> dict[str, dict]:
    return {
        "image": {
            "messages": parts.user(parts.image(media["png"]), text="What is it?"),
            "max_tokens": MAX_TOKENS,
            "adapter": None,
        },
        "audio": {
            "messages": parts.user(parts.audio(media["wav"]), text="What is it?"),
            "max_tokens": MAX_TOKENS,
            "adapter": None,
        },
    }


@pytest.fixture(scope="module")
def hf_tokens(official, media, parts, tmp_path_factory):
    job = {"checkpoint": str(official), "adapters": {}, "requests": requests(media, parts)}
    return collect("hf", [job], tmp_path_factory.mktemp("official-hf"))[0]


def test_official_layout_in_the_prompt(official, hf_tokens):
    """BOS, then the modality's start tag, N tokens and end tag, then the conversation (as the official model)."""
    from onellm.processing import OneLLMProcessor

    processor = OneLLMProcessor.from_pretrained(official)
    for name in ("image", "audio"):
        ids = hf_tokens[name]["prompt_ids"]
        marker = processor.token_id(name)
        assert (
            ids[0] == 1 and ids[1 : 1 + processor.num_placeholder_tokens] == [marker] * processor.num_placeholder_tokens
        )
        assert marker not in ids[1 + processor.num_placeholder_tokens :]
        assert len(hf_tokens[name]["token_ids"]) == MAX_TOKENS or hf_tokens[name]["token_ids"][-1] == 2
    assert hf_tokens["image"]["token_ids"] != hf_tokens["audio"]["token_ids"]


def test_vllm_engine_matches_hf(official, hf_tokens, media, parts, tmp_path):
    pytest.importorskip("vllm")
    job = {"checkpoint": str(official), "adapters": {}, "requests": requests(media, parts)}
    assert collect("vllm", [job], tmp_path)[0] == hf_tokens


def test_stock_vllm_server_matches_hf(official, hf_tokens, media, parts, kit, tmp_path):
    pytest.importorskip("vllm")
    port = kit.free_port()
    command = [
        *(sys.executable, "-m", "vllm.entrypoints.openai.api_server"),
        *("--model", str(official), "--served-model-name", "onellm-official", "--host", "127.0.0.1"),
        *("--port", str(port), "--dtype", "float32", "--max-model-len", "512", "--enforce-eager"),
        *("--distributed-executor-backend", "uni", "--api-key", kit.API_KEY),
    ]
    server = kit.start_server(command, tmp_path / "stock_official.log", port, timeout=300, stock_vllm=True)
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key=kit.API_KEY, max_retries=0, timeout=120)
        for name, request in requests(media, parts).items():
            response = client.chat.completions.create(
                model="onellm-official",
                messages=request["messages"],
                max_tokens=MAX_TOKENS,
                temperature=0,
                extra_body={"return_token_ids": True},
            )
            got = (response.usage.prompt_tokens, response.choices[0].model_extra["token_ids"])
            assert got == (len(hf_tokens[name]["prompt_ids"]), hf_tokens[name]["token_ids"]), name
    finally:
        kit.stop_server(server)
