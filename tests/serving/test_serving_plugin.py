"""The vLLM plugin: registration, and vLLM's own OpenAI server answering onellm checkpoints through it."""

from __future__ import annotations

import sys

import pytest
from openai import OpenAI

vllm = pytest.importorskip("vllm")


def test_register_is_idempotent():
    from vllm import ModelRegistry
    from vllm.model_executor.models.interfaces import supports_lora, supports_multimodal

    from onellm.serving import plugin
    from onellm.serving.vllm_model import OneLLMForConditionalGeneration

    plugin.register()
    plugin.register()
    assert list(ModelRegistry.get_supported_archs()).count(plugin.ARCHITECTURE) == 1
    assert supports_multimodal(OneLLMForConditionalGeneration) and supports_lora(OneLLMForConditionalGeneration)


@pytest.fixture(scope="module")
def stock_server(checkpoint, tmp_path_factory, kit):
    """``python -m vllm.entrypoints.openai.api_server --model CKPT``: nothing of ours but the installed plugin."""
    port = kit.free_port()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(checkpoint),
        "--served-model-name",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "1024",
        "--enforce-eager",
        "--distributed-executor-backend",
        "uni",
        "--api-key",
        kit.API_KEY,
    ]
    server = kit.start_server(
        command, tmp_path_factory.mktemp("logs") / "stock_vllm.log", port, timeout=300, stock_vllm=True
    )
    yield server
    kit.stop_server(server)


@pytest.mark.slow
def test_stock_vllm_server_answers_image_and_audio_chats(stock_server, hf_server, media, parts, kit):
    """image_url and input_audio parts through vLLM's own chat pipeline (its media loaders, its chat template
    handling) give the same greedy tokens as onellm serve's hf engine, the reference, in either part order."""
    cases = {
        "image": parts.user(parts.image(media["png"])),
        "audio": parts.user(parts.audio(media["wav"])),
        "image + audio": parts.user(parts.image(media["png2"]), parts.audio(media["wav"])),
    }
    # The text part first (OpenAI's examples): both servers render the checkpoint's template, inputs first.
    image_first = cases["image + audio"][0]["content"]
    cases["text, image, audio"] = [{"role": "user", "content": [image_first[-1], *image_first[:-1]]}]
    answers = {}
    for name, messages in cases.items():
        outputs = []
        for server in (stock_server, hf_server):
            client = OpenAI(base_url=f"{server.url}/v1", api_key=kit.API_KEY, max_retries=0, timeout=120)
            response = client.chat.completions.create(
                model="tiny", messages=messages, max_tokens=12, temperature=0, extra_body={"return_token_ids": True}
            )
            outputs.append((response.usage.prompt_tokens, response.choices[0].model_extra["token_ids"]))
        assert outputs[0] == outputs[1], name
        answers[name] = outputs[0]
    assert answers["text, image, audio"] == answers["image + audio"]
