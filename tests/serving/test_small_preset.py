"""The README's product-team flow on the REAL small preset (issue 15): a checkpoint the training recipes wrote
(SmolLM2-135M + DINOv2 ViT-S/14) is served by ``onellm serve`` with its defaults (the vLLM engine, 127.0.0.1) and
answered through the official ``openai`` client. ``onellm ui`` on the same checkpoint: test_ui.py."""

from __future__ import annotations

import base64
import io
import sys

import pytest
from media_factory import png_bytes, wav_bytes
from openai import OpenAI
from PIL import Image

pytestmark = pytest.mark.slow


def black_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (112, 112)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served(small_checkpoint, kit, tmp_path_factory):
    """``onellm serve CKPT --api-key KEY`` as the README writes it (plus a free port)."""
    pytest.importorskip("vllm")
    port = kit.free_port()
    command = [sys.executable, "-m", "onellm.cli", "serve", str(small_checkpoint), "--api-key", kit.API_KEY]
    log = tmp_path_factory.mktemp("logs") / "small_serve.log"
    server = kit.start_server([*command, "--port", str(port)], log, port, timeout=300)
    yield server
    kit.stop_server(server)


def test_onellm_serve_answers_the_readme_openai_snippet(served, small_checkpoint, kit):
    from onellm.processing import OneLLMProcessor

    assert "engine vllm ready" in served.log.read_text()  # the default engine, not the hf fallback
    client = OpenAI(base_url=f"{served.url}/v1", api_key=kit.API_KEY)
    png = base64.b64encode(png_bytes(size=(96, 96), seed=4)).decode()
    reply = client.chat.completions.create(
        model="final",  # the checkpoint folder's name
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                    {"type": "text", "text": "What colour is the shape?"},
                ],
            }
        ],
        max_tokens=16,
    )
    answer = reply.choices[0].message.content
    assert answer and answer.strip(), reply
    assert reply.choices[0].finish_reason in ("stop", "length") and 0 < reply.usage.completion_tokens <= 16
    # The prompt the LLM saw: the rendered chat with the <image> marker expanded to the UPM's N+2 positions.
    processor = OneLLMProcessor.from_pretrained(str(small_checkpoint))
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the shape?"}]}]
    )
    expected = processor.expand_placeholders(processor.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert reply.usage.prompt_tokens == len(expected) and processor.num_placeholder_tokens == 16 + 2 + 1


def test_the_answer_depends_on_the_image(served, kit):
    """The first answer token's distribution differs between a black picture and a noise picture: an engine that
    dropped the image, or fed the LLM the same embeddings for every image, would give both the same log-probabilities.
    (Greedy tokens are not compared: a checkpoint trained for two steps may well answer both alike.)"""
    client = OpenAI(base_url=f"{served.url}/v1", api_key=kit.API_KEY)
    firsts = [first_token(client, png)[0] for png in (black_png(), png_bytes(size=(112, 112), seed=5))]
    assert firsts[0] != pytest.approx(firsts[1], abs=1e-3), firsts


def test_a_question_sent_before_the_image_reads_the_prompt_the_model_trained_on(served, kit):
    """OpenAI's examples send the text part first; the chat template puts the image first, as every stage trains
    (a trained small checkpoint answered image QA 0.14 instead of 0.50 with the question first: BENCHMARKS.md)."""
    client = OpenAI(base_url=f"{served.url}/v1", api_key=kit.API_KEY)
    png = png_bytes(size=(112, 112), seed=5)
    (after, after_count), (before, before_count) = (first_token(client, png, text_first=t) for t in (False, True))
    assert before_count == after_count and before == pytest.approx(after, abs=1e-4), (before, after)


def test_onellm_serve_answers_an_audio_chat(served, small_checkpoint, kit):
    """An ``input_audio`` part (a WAV file inline, as the openai client sends it) on the real small preset: its
    audio tokenizer and DINOv2 through the vLLM engine. The prompt holds the audio's N+3 positions, and the first
    answer token's distribution differs between silence and a tone."""
    from onellm.processing import OneLLMProcessor

    client = OpenAI(base_url=f"{served.url}/v1", api_key=kit.API_KEY)
    (silence, silent_count), (tone, tone_count) = (
        first_token(client, wav_bytes(freq=freq), "audio") for freq in (0.0, 880.0)
    )
    processor = OneLLMProcessor.from_pretrained(str(small_checkpoint))
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Describe it."}]}]
    )
    expected = processor.expand_placeholders(processor.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert silent_count == tone_count == len(expected) and "<audio>" in rendered
    assert silence != pytest.approx(tone, abs=1e-3), (silence, tone)
    reply = client.chat.completions.create(
        model="final",
        messages=[{"role": "user", "content": [audio_part(wav_bytes()), {"type": "text", "text": "What is it?"}]}],
        max_tokens=8,
    )
    assert reply.choices[0].message.content.strip() and reply.usage.completion_tokens <= 8


def audio_part(wav: bytes) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}


def first_token(
    client: OpenAI, data: bytes, modality: str = "image", text_first: bool = False
) -> tuple[dict[str, float], int]:
    """ "Describe it." about a PNG (``modality`` image) or a WAV file (audio), one greedy token: (its top-5
    log-probabilities, the prompt's token count). ``text_first`` sends the text part before the input."""
    if modality == "audio":
        part = audio_part(data)
    else:
        part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{base64.b64encode(data).decode()}"}}
    content = [part, {"type": "text", "text": "Describe it."}]
    if text_first:
        content.reverse()
    reply = client.chat.completions.create(
        model="final",
        messages=[{"role": "user", "content": content}],
        max_tokens=1,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
    )
    top = {t.token: t.logprob for t in reply.choices[0].logprobs.content[0].top_logprobs}
    return top, reply.usage.prompt_tokens


def test_vllm_serves_a_checkpoint_with_two_word_slots(small_two_slot_checkpoint, kit, tmp_path):
    """``extra_slots: 0`` (the small curriculum before 2026-12-05 late morning; each input N + 2 positions): the vLLM
    plugin expands each marker as the processor counts, and the answer still depends on the image."""
    pytest.importorskip("vllm")
    from onellm.processing import OneLLMProcessor

    processor = OneLLMProcessor.from_pretrained(str(small_two_slot_checkpoint))
    assert processor.num_placeholder_tokens == 16 + 2
    port = kit.free_port()
    command = [sys.executable, "-m", "onellm.cli", "serve", str(small_two_slot_checkpoint), "--port", str(port)]
    server = kit.start_server(command, tmp_path / "serve.log", port, timeout=300)
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        rendered = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
        )
        expected = processor.expand_placeholders(processor.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        (black, black_count), (noise, noise_count) = (
            first_token(client, png) for png in (black_png(), png_bytes(size=(112, 112), seed=5))
        )
        assert black_count == noise_count == len(expected)
        assert black != pytest.approx(noise, abs=1e-3), (black, noise)
        assert "engine vllm ready" in server.log.read_text()
    finally:
        kit.stop_server(server)
