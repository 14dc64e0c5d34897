"""``onellm serve`` through the official openai client, once per engine (hf; vllm is marked slow).

Each engine's server starts once (session fixtures in conftest.py) and is shared with the parity tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time

import httpx
import pytest
from media_factory import depth_png_bytes, mp4_bytes, normal_png_bytes
from openai import OpenAI

ENGINES = ["hf", pytest.param("vllm", marks=pytest.mark.slow)]


API_KEY = "test-key-123"  # conftest.API_KEY (a sub-folder's conftest is not importable)
LORA_NAME = "tiny-lora"  # conftest.LORA_NAME
BARE_LORA_NAME = "tiny-lora-bare"  # conftest.BARE_LORA_NAME


@pytest.fixture(scope="module", params=ENGINES)
def server(request, kit):
    assert (kit.API_KEY, kit.LORA_NAME, kit.BARE_LORA_NAME) == (API_KEY, LORA_NAME, BARE_LORA_NAME)
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def processor(checkpoint):
    from transformers import AutoProcessor

    import onellm  # noqa: F401

    return AutoProcessor.from_pretrained(checkpoint)


def greedy(client: OpenAI, messages: list, model: str = "tiny", max_tokens: int = 10, **kwargs):
    response = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        extra_body={"return_token_ids": True},
        **kwargs,
    )
    return response, response.choices[0].model_extra["token_ids"]


def expected_prompt_tokens(processor, messages: list, **media) -> int:
    """The prompt length by the processor's own count (each marker expanded to N+2 placeholders)."""
    content = [
        {"type": {"image_url": "image", "input_audio": "audio"}.get(p["type"], p["type"])} if p["type"] != "text" else p
        for p in messages[0]["content"]
    ]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}])
    return processor(text=prompt, **media)["input_ids"].shape[1]


def test_models_lists_the_base_model_and_the_adapter(client):
    assert [m.id for m in client.models.list().data] == ["tiny", LORA_NAME, BARE_LORA_NAME]


def test_image_chat(client, processor, media, parts):
    messages = parts.user(parts.image(media["png"]))
    response, ids = greedy(client, messages, max_tokens=8)
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == "tiny"
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert len(ids) == 8 and response.usage.completion_tokens == 8
    # the text is the ids decoded; a trailing incomplete UTF-8 sequence is dropped (as vLLM does)
    assert processor.decode(ids, skip_special_tokens=True).rstrip("\ufffd") == choice.message.content
    assert response.usage.prompt_tokens == expected_prompt_tokens(processor, messages, image=[media["png"]])


def test_audio_chat(client, processor, media, parts):
    messages = parts.user(parts.audio(media["wav"]))
    response, ids = greedy(client, messages, max_tokens=8)
    assert len(ids) == 8
    assert response.usage.prompt_tokens == expected_prompt_tokens(processor, messages, audio=[media["wav"]])


def test_every_input_reaches_the_model(client, media, parts):
    """Greedy continuations differ when an image changes or an audio input is added (the tiny LLM is input-sensitive)."""
    _, one = greedy(client, parts.user(parts.image(media["png"])))
    _, other = greedy(client, parts.user(parts.image(media["png2"])))
    response, both = greedy(client, parts.user(parts.image(media["png"]), parts.audio(media["wav"])))
    assert len({tuple(one), tuple(other), tuple(both)}) == 3
    _, again = greedy(client, parts.user(parts.image(media["png"])))
    assert again == one  # greedy is deterministic
    single, _ = greedy(client, parts.user(parts.image(media["png"])))
    assert response.usage.prompt_tokens == single.usage.prompt_tokens + 6 + 1  # N+2 = 6 placeholders + "\n"


def test_a_question_sent_before_its_inputs_is_answered_as_if_sent_after(client, media, parts):
    """OpenAI's own examples send the text part first; the model is trained on its inputs first (``<image>\\n...``)."""
    media_first = parts.user(parts.image(media["png"]), parts.audio(media["wav"]), text="What is it?")
    text_first = [{"role": "user", "content": [media_first[0]["content"][-1], *media_first[0]["content"][:-1]]}]
    swapped = [{"role": "user", "content": [media_first[0]["content"][1], *media_first[0]["content"][::2]]}]
    expected, ids = greedy(client, media_first)
    response, same = greedy(client, text_first)
    assert same == ids and response.usage.prompt_tokens == expected.usage.prompt_tokens
    _, other = greedy(client, swapped)  # the inputs' own order still counts: audio first is another prompt
    assert other != ids


def test_streaming_matches_non_streaming(client, media, parts):
    messages = parts.user(parts.image(media["png"]), parts.audio(media["wav"]))
    reference, ids = greedy(client, messages, max_tokens=12)
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"return_token_ids": True},
    )
    text, streamed_ids, finish, usage, roles = "", [], None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            roles.append(choice.delta.role)
            text += choice.delta.content or ""
            streamed_ids += (choice.model_extra or {}).get("token_ids") or []
            finish = choice.finish_reason or finish
    assert roles[0] == "assistant"
    assert text == reference.choices[0].message.content and streamed_ids == ids
    assert finish == "length" and usage.completion_tokens == 12
    assert usage.prompt_tokens == reference.usage.prompt_tokens


def test_logprobs_as_openai_returns_them(client, processor, media, parts):
    """``logprobs`` + ``top_logprobs``: one entry per generated token, its text and bytes; the greedy token is the
    most likely one; alternatives most likely first; log-probabilities of one distribution (<= 0, summing <= 1);
    streamed entries equal collected ones; none without ``logprobs``; another image changes the distribution."""
    messages = parts.user(parts.image(media["png"]))
    response, ids = greedy(client, messages, max_tokens=6, logprobs=True, top_logprobs=3)
    content = response.choices[0].logprobs.content
    assert len(content) == len(ids) == 6
    for entry, token_id in zip(content, ids, strict=True):
        assert entry.token == processor.decode([token_id]) and entry.bytes == list(entry.token.encode("utf-8"))
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] <= 0
        assert sum(math.exp(t) for t in tops) <= 1 + 1e-4
        assert entry.top_logprobs[0].token == entry.token and entry.logprob == pytest.approx(tops[0], abs=1e-5)
    plain, plain_ids = greedy(client, messages, max_tokens=6)
    assert plain.choices[0].logprobs is None and plain_ids == ids
    stream = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=6, temperature=0, stream=True, logprobs=True, top_logprobs=3
    )
    streamed = [e for chunk in stream for c in chunk.choices if c.logprobs for e in c.logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    other, _ = greedy(client, parts.user(parts.image(media["png2"])), max_tokens=1, logprobs=True, top_logprobs=3)
    first = {t.token: t.logprob for t in other.choices[0].logprobs.content[0].top_logprobs}
    assert first != pytest.approx({t.token: t.logprob for t in content[0].top_logprobs}, abs=1e-4)


def test_lora_adapter_by_model_name(client, media, parts):
    messages = parts.user(parts.image(media["png"]))
    _, base = greedy(client, messages)
    response, adapted = greedy(client, messages, model=LORA_NAME)
    assert response.model == LORA_NAME and adapted != base
    # the same weights saved as a bare-LLM adapter (no "language_model." in the names) act the same
    assert greedy(client, messages, model=BARE_LORA_NAME)[1] == adapted
    # Base and adapter requests in flight together keep their own outputs (vLLM CPU: max_loras >= adapters + 1).
    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # the servers admit 3 requests at once
        futures = [pool.submit(greedy, client, messages, model) for model in ["tiny", LORA_NAME, "tiny"]]
        outputs = [f.result()[1] for f in futures]
    assert outputs == [base, adapted, base]


def test_seeded_sampling_n_and_stop(client, media, parts):
    messages = parts.user(parts.image(media["png"]))
    kwargs = {"model": "tiny", "messages": messages, "max_tokens": 10, "temperature": 1.0, "top_p": 0.9}
    first = client.chat.completions.create(n=2, seed=7, **kwargs)
    second = client.chat.completions.create(n=2, seed=7, **kwargs)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    assert 0 < first.usage.completion_tokens <= 20
    # stop: the greedy text is cut before the first occurrence of the stop string, which is not returned
    full = greedy(client, messages, max_tokens=16)[0].choices[0].message.content
    stop = next(
        full[i : i + 2] for i in range(3, len(full) - 2) if "\ufffd" not in full[i : i + 2] and full[i : i + 2].strip()
    )
    cut = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_extension_modalities(client, media, parts):
    b64 = parts.b64
    cases = {
        "video": {"type": "video_url", "video_url": {"url": parts.data_url(mp4_bytes(), "video/mp4")}},
        "point": {"type": "input_point_cloud", "input_point_cloud": {"data": b64(media["point"]), "format": "npy"}},
        "depth": {"type": "input_depth", "input_depth": {"data": b64(depth_png_bytes()), "format": "png"}},
        "normal": {"type": "input_normal", "input_normal": {"data": b64(normal_png_bytes()), "format": "png"}},
        "imu": {"type": "input_imu", "input_imu": {"data": b64(media["imu"]), "format": "npy", "sample_rate": 50}},
        "imu_csv": {"type": "input_imu", "input_imu": {"data": b64(b"0.1,0.2,9.8,0,0,0\n" * 60), "format": "csv"}},
        "fmri": {"type": "input_fmri", "input_fmri": {"data": b64(media["fmri"]), "format": "npy"}},
    }
    outputs, prompt_tokens = {}, set()
    for name, part in cases.items():
        response, ids = greedy(client, parts.user(part), max_tokens=6)
        assert len(ids) == 6 or (ids and ids[-1] == 2 and response.choices[0].finish_reason == "stop"), name
        outputs[name] = tuple(ids)
        prompt_tokens.add(response.usage.prompt_tokens)
    assert len(prompt_tokens) == 1  # every modality occupies the same N+2 placeholder positions
    assert len(set(outputs.values())) >= 5  # different modalities drive the LLM differently
    # several extension inputs in one message
    response, ids = greedy(client, parts.user(cases["point"], cases["imu"], cases["fmri"]), max_tokens=6)
    assert len(ids) == 6 or (ids and ids[-1] == 2 and response.choices[0].finish_reason == "stop")


def test_file_url_inside_the_allowed_folder(client, media, parts, media_folder):
    url = (media_folder / "cat.png").as_uri()
    _, from_file = greedy(client, parts.user({"type": "image_url", "image_url": {"url": url}}))
    _, inline = greedy(client, parts.user(parts.image(media["png"])))
    assert from_file == inline


# --- bad inputs: every one a 4xx in OpenAI's error shape, and the server stays up -------------------------
def _chat(content, **extra) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def _url_part(url: str) -> list:
    return [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]


def _bad_requests(server, media, parts) -> list[tuple[str, dict | bytes, int, str, dict | None]]:
    """(case, JSON body or raw bytes, expected status, a word the message must contain, headers or None=auth)."""
    port = server.url.rsplit(":", 1)[1]
    wav = media["wav"]
    return [
        ("malformed base64", _chat(_url_part("data:image/png;base64,@@not*base64@@")), 400, "base64", None),
        ("top_logprobs without logprobs", _chat("hi", top_logprobs=2), 400, "logprobs", None),
        ("too many top_logprobs", _chat("hi", logprobs=True, top_logprobs=21), 400, "top_logprobs", None),
        (
            "non-image bytes",
            _chat(_url_part(parts.data_url(b"just some text, no image", "image/png"))),
            400,
            "image",
            None,
        ),
        (
            "truncated wav",
            _chat([{"type": "input_audio", "input_audio": {"data": parts.b64(wav[: len(wav) // 2]), "format": "wav"}}]),
            400,
            "truncated",
            None,
        ),
        ("decompression bomb png", _chat(_url_part(parts.data_url(parts.bomb_png(), "image/png"))), 400, "pixel", None),
        ("ssrf to 127.0.0.1", _chat(_url_part(f"http://127.0.0.1:{port}/health")), 400, "non-public", None),
        (
            "ssrf to cloud metadata",
            _chat(_url_part("http://169.254.169.254/latest/meta-data/")),
            400,
            "non-public",
            None,
        ),
        (
            "ssrf via a name for loopback",
            _chat(_url_part(f"http://localhost:{port}/v1/models")),
            400,
            "non-public",
            None,
        ),
        ("host not allowlisted", _chat(_url_part("https://example.com/cat.png")), 400, "allowed-media-domains", None),
        ("file outside the folder", _chat(_url_part("file:///etc/passwd")), 400, "outside", None),
        (
            "unknown part type",
            _chat([{"type": "input_smell", "input_smell": {"data": "AAAA"}}]),
            400,
            "unknown content part type",
            None,
        ),
        ("marker in text", _chat("look: <image>"), 400, "reserved", None),
        ("too many inputs", _chat([parts.image(media["png"])] * 5), 400, "at most 4", None),
        ("unsupported role", {"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}, 400, "role", None),
        ("temperature out of range", _chat("hi", temperature=3.5), 400, "temperature", None),
        ("max_tokens beyond context", _chat("hi", max_tokens=5000), 400, "max_tokens", None),
        ("unknown model", {**_chat("hi"), "model": "gpt-7"}, 404, "does not exist", None),
        ("invalid json", b"{not json", 400, "JSON", None),
        ("oversized body", _chat("x" * (3 * 1024 * 1024)), 413, "limit", None),
        ("missing api key", _chat("hi"), 401, "API key", {}),
        ("wrong api key", _chat("hi"), 401, "API key", {"Authorization": "Bearer nope"}),
    ]


def test_bad_inputs_get_4xx_and_the_server_stays_up(server, media, parts):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    failures = []
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for case, body, status, word, headers in _bad_requests(server, media, parts):
            kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
            response = http.post("/v1/chat/completions", headers=auth if headers is None else headers, **kwargs)
            error = (
                response.json().get("error", {})
                if response.headers.get("content-type", "").startswith("application/json")
                else {}
            )
            if (
                response.status_code != status
                or word.lower() not in str(error.get("message", "")).lower()
                or "type" not in error
            ):
                failures.append(f"{case}: HTTP {response.status_code} {response.text[:300]}")
        assert not failures, "\n".join(failures)
        assert server.alive() and http.get("/health").status_code == 200
        ok = http.post("/v1/chat/completions", headers=auth, json=_chat([parts.image(media["png"])]))
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4


def _parse_metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} not exported")


def _metric(server, name: str) -> float:
    return _parse_metric(httpx.get(f"{server.url}/metrics", timeout=10).text, name)


async def _metrics_text(http: httpx.AsyncClient) -> str:
    return (await http.get("/metrics")).text


def _long_stream(parts, media, n: int = 1) -> dict:
    return _chat([parts.image(media["png"])], max_tokens=980, min_tokens=980, temperature=1.0, seed=7, n=n, stream=True)


def test_queue_limit_answers_429(hf_server, media, parts):
    """--max-queue 3: three long streams are admitted, the fourth request gets 429 and the slots free up after.

    Admission is engine-independent server code; the hf engine generates one request at a time, so three admitted
    requests stay in flight while the fourth arrives. (vLLM runs the tiny model at ~1000 tokens/s: its first
    stream can end before the third is admitted on a loaded 2-core machine, so it cannot hold the queue full.)
    """
    server, auth = hf_server, {"Authorization": f"Bearer {API_KEY}"}

    async def scenario() -> None:
        never = asyncio.Event()

        async def hold_stream(http: httpx.AsyncClient) -> None:
            async with http.stream("POST", "/v1/chat/completions", headers=auth, json=_long_stream(parts, media)):
                await never.wait()  # read nothing; cancelled below

        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            holders = [asyncio.create_task(hold_stream(http)) for _ in range(3)]
            deadline = time.monotonic() + 60
            while _parse_metric(await _metrics_text(http), "onellm_requests_in_flight") < 3:
                ended = [repr(h.exception()) for h in holders if h.done()]
                assert time.monotonic() < deadline and not ended, f"the three streams were not admitted: {ended}"
                await asyncio.sleep(0.05)
            busy = await http.post("/v1/chat/completions", headers=auth, json=_chat("hi"))
            assert busy.status_code == 429 and busy.json()["error"]["type"] == "rate_limit_error", busy.text
            assert busy.headers.get("retry-after")
            for holder in holders:
                holder.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
            text = await _metrics_text(http)
            assert 'onellm_http_responses_total{path="/v1/chat/completions",status="429"}' in text
            while _parse_metric(text, "onellm_requests_in_flight"):
                assert time.monotonic() < deadline, "slots not released after the clients left"
                await asyncio.sleep(0.1)
                text = await _metrics_text(http)
            ok = await http.post("/v1/chat/completions", headers=auth, json=_chat("hi"))
            assert ok.status_code == 200, ok.text

    asyncio.run(scenario())


def test_client_disconnect_aborts(server, media, parts):
    """Three clients leave right after their 200 arrives (mid-stream, 8 x 980 tokens asked): the server counts three
    disconnects, none of the streams ran to its end, and the engine holds no request afterwards."""
    auth = {"Authorization": f"Bearer {API_KEY}"}

    async def scenario() -> None:
        async def leave_after_headers(http: httpx.AsyncClient) -> None:
            # eight sequences per request, each token with its 20 most likely alternatives: ~8 MB of events per
            # request, far more than the loopback socket buffers hold, so the server cannot write a stream to its end
            # before its client leaves, however fast the engine (vLLM writes the tiny model's 8 x 980 plain tokens,
            # ~1.5 MB, into the buffers within the moment the client takes to close: no disconnect was seen)
            body = {**_long_stream(parts, media, n=8), "logprobs": True, "top_logprobs": 20}
            async with http.stream("POST", "/v1/chat/completions", headers=auth, json=body) as r:
                assert r.status_code == 200, (await r.aread()).decode()
            # leaving the block closes the connection with the body unread

        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            before = await _metrics_text(http)
            await asyncio.gather(*(leave_after_headers(http) for _ in range(3)))
            deadline = time.monotonic() + 30
            text = await _metrics_text(http)
            while _parse_metric(text, "onellm_engine_unfinished_requests") or _parse_metric(
                text, "onellm_requests_in_flight"
            ):
                assert time.monotonic() < deadline, "the engine still holds requests 30 s after the clients left"
                await asyncio.sleep(0.1)
                text = await _metrics_text(http)
            gone = _parse_metric(text, "onellm_client_disconnects_total")
            assert gone - _parse_metric(before, "onellm_client_disconnects_total") == 3
            finished = _parse_metric(text, "onellm_request_latency_seconds_count")
            assert finished == _parse_metric(before, "onellm_request_latency_seconds_count"), "a stream ran to its end"

    asyncio.run(scenario())
    response = httpx.post(f"{server.url}/v1/chat/completions", headers=auth, json=_chat("hi"), timeout=60)
    assert response.status_code == 200


def test_health_and_metrics(server):
    health = httpx.get(f"{server.url}/health", timeout=10).json()
    assert health["status"] == "ok"
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert f'onellm_engine_info{{engine="{health["engine"]}"}} 1' in text
    assert _metric(server, "onellm_completion_tokens_total") > 0
    assert 'onellm_http_responses_total{path="/v1/chat/completions",status="200"}' in text
    assert _metric(server, "onellm_time_to_first_token_seconds_count") > 0


def test_the_port_is_held_from_before_the_engine_starts(checkpoint, kit, tmp_path):
    """``onellm serve`` binds --port first and serves on that socket once the engine is up: while the engine starts
    nothing else can take the port (vLLM picks free ports for its own processes then), and connections are refused
    rather than answered by something else."""
    import os
    import socket
    import subprocess

    port = kit.free_port()
    log = tmp_path / "serve.log"
    command = kit.onellm_serve(checkpoint, "hf", port)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as kit.start_server runs it
    process = subprocess.Popen(
        command, cwd=kit.REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    server = kit.Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200, log.read_text()[-2000:]
        text = log.read_text()
        held, ready = text.find(f"holding 127.0.0.1:{port}"), text.find("engine hf ready")
        assert 0 <= held < ready, text[-2000:]  # bound before the engine started, and served on that socket
        with socket.socket() as other, pytest.raises(OSError):
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind(("127.0.0.1", port))
    finally:
        kit.stop_server(server)
