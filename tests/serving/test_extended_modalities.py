"""The six modalities beyond OneLLM's eight served (issue 12): their content parts through ``onellm serve`` and the
official openai client (hf engine; vllm marked slow), bad inputs answered 4xx naming the part, the chat page's
detection and messages, and (slow) the vLLM engine's processor, dummy inputs and embeddings giving the hf engine's
greedy tokens.

The checkpoint is the tiny preset built with all fourteen (``modalities="all"``), its LLM input-sensitive
(conftest.input_sensitive); nothing in serving/ names these modalities: part types, file suffixes and recognition,
pre-checks and preprocessing all come from their modality files.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import httpx
import numpy as np
import pytest
from greedy_tokens import collect
from media_factory import GRAPH, ROW, grey16_png_bytes, json_bytes, npy_bytes, series_csv_bytes
from openai import OpenAI

from onellm.modalities import modality_names

EXTENDED = ["xray", "infrared", "hyperspectral", "timeseries", "tabular", "graph"]
API_KEY = "extended-key"
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def checkpoint_all(tmp_path_factory, kit) -> Path:
    from onellm.presets import build_preset

    model, processor = build_preset("tiny", modalities="all")
    kit.input_sensitive(model, seed=1)
    folder = tmp_path_factory.mktemp("ckpt-all") / "tiny-all"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["hf", pytest.param("vllm", marks=pytest.mark.slow)])
def server_all(request, checkpoint_all, tmp_path_factory, kit):
    """``onellm serve`` on the fourteen-modality checkpoint, once per engine (vllm: marked slow)."""
    engine = request.param
    if engine == "vllm":
        pytest.importorskip("vllm")
    port = kit.free_port()
    command = kit.onellm_serve(checkpoint_all, engine, port, "--api-key", API_KEY, "--max-image-pixels", "100000")
    log = tmp_path_factory.mktemp("logs") / f"{engine}_all.log"
    server = kit.start_server(command, log, port, timeout=300 if engine == "vllm" else 180)
    yield server
    kit.stop_server(server)


def media() -> dict[str, tuple[bytes, str]]:
    """One input per new modality as a client sends it: (file bytes, format)."""
    rng = np.random.default_rng(0)
    return {
        "xray": (grey16_png_bytes(seed=3), "png"),
        "infrared": (npy_bytes((rng.random((30, 40)) * 40 + 290).astype(np.float32)), "npy"),
        "hyperspectral": (npy_bytes(rng.random((16, 16, 30)).astype(np.float32)), "npy"),
        "timeseries": (series_csv_bytes(header=False), "csv"),
        "tabular": (json_bytes(ROW), "json"),
        "graph": (json_bytes(GRAPH), "json"),
    }


def part(modality: str, data: bytes, fmt: str) -> dict:
    kind = f"input_{modality}"
    return {"type": kind, kind: {"data": base64.b64encode(data).decode(), "format": fmt}}


def user(*parts: dict, text: str = "Describe it.") -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def test_every_new_content_part_through_the_openai_client(server_all):
    client = OpenAI(base_url=f"{server_all.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    outputs, prompt_tokens = {}, set()
    for modality, (data, fmt) in media().items():
        response = client.chat.completions.create(
            model="tiny", messages=user(part(modality, data, fmt)), max_tokens=6, temperature=0,
            extra_body={"return_token_ids": True},
        )  # fmt: skip
        ids = response.choices[0].model_extra["token_ids"]
        assert len(ids) == 6 or response.choices[0].finish_reason == "stop", modality
        outputs[modality] = tuple(ids)
        prompt_tokens.add(response.usage.prompt_tokens)
    assert len(prompt_tokens) == 1  # every modality occupies the same N+2 placeholder positions
    assert len(set(outputs.values())) >= 4  # different modalities drive the LLM differently
    several = [part(m, *media()[m]) for m in ("timeseries", "tabular", "graph")]
    response = client.chat.completions.create(model="tiny", messages=user(*several), max_tokens=4, temperature=0)
    assert response.usage.completion_tokens == 4


def test_bad_new_inputs_get_400_naming_the_part(server_all):
    cases = {
        "tabular NaN": (part("tabular", b'{"price": NaN}', "json"), "field 'price' is nan"),
        "graph edge": (part("graph", b'{"nodes": [[1]], "edges": [[0, 3]]}', "json"), "edge to node 3"),
        "timeseries channels": (part("timeseries", npy_bytes(np.zeros((4, 40), np.float32)), "npy"), "found 40"),
        "cube over the pixel limit": (
            part("hyperspectral", npy_bytes(np.zeros((400, 400, 2), np.float32)), "npy"),
            "above the server's 100000-pixel limit",
        ),
        "xray not an image": (part("xray", b"GIF89a broken", "png"), "not a decodable image"),
    }
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server_all.url, timeout=60) as http:
        for case, (bad, words) in cases.items():
            body = {"model": "tiny", "messages": user(bad), "max_tokens": 2}
            response = http.post("/v1/chat/completions", headers=auth, json=body)
            message = response.json()["error"]["message"]
            assert response.status_code == 400 and message.startswith("messages[0].content[0]"), (case, message)
            assert words in message, (case, message)
        assert server_all.alive() and http.get("/health").status_code == 200


def test_csv_parts_are_read_by_the_modalitys_own_csv_reader(server_all):
    """CSV parts reach the modality as CSV files (the server parses no CSV itself): a time series with a header row
    answers as the same numbers without one, a one-row table with a header as the same row sent as JSON, and an IMU
    CSV (numbers only, as IMU files are) still reads."""
    row_csv = b"age,height,city,member,note\n41,1.82,Oslo,True,\n"  # ROW; the empty cell is its null field
    imu_csv = "".join(f"{0.1 * i:.1f},0.2,9.8,0,0,{0.01 * i:.2f}\n" for i in range(60)).encode()
    cases = {
        "timeseries with header": part("timeseries", series_csv_bytes(header=True), "csv"),
        "timeseries without header": part("timeseries", series_csv_bytes(header=False), "csv"),
        "tabular one-row CSV": part("tabular", row_csv, "csv"),
        "tabular JSON": part("tabular", json_bytes(ROW), "json"),
        "imu CSV": {"type": "input_imu", "input_imu": {"data": base64.b64encode(imu_csv).decode(), "format": "csv"}},
        # no "format": a data URL's media type, or a URL path's .csv suffix, says CSV
        "imu CSV data URL": {"type": "input_imu", "input_imu": {"url": data_url(imu_csv, "text/csv")}},
        "timeseries CSV data URL": {
            "type": "input_timeseries",
            "input_timeseries": {"url": data_url(series_csv_bytes(header=True), "text/csv")},
        },
    }
    auth = {"Authorization": f"Bearer {API_KEY}"}
    tokens = {}
    with httpx.Client(base_url=server_all.url, timeout=120) as http:
        for case, csv_part in cases.items():
            body = {"model": "tiny", "messages": user(csv_part), "max_tokens": 4, "temperature": 0,
                    "return_token_ids": True}  # fmt: skip
            response = http.post("/v1/chat/completions", headers=auth, json=body)
            assert response.status_code == 200, (case, response.text)
            tokens[case] = response.json()["choices"][0]["token_ids"]
    assert tokens["timeseries with header"] == tokens["timeseries without header"]
    assert tokens["tabular one-row CSV"] == tokens["tabular JSON"]
    assert tokens["imu CSV data URL"] == tokens["imu CSV"]
    assert tokens["timeseries CSV data URL"] == tokens["timeseries without header"]


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_chat_page_detects_and_sends_the_new_files(tiny_all, media_paths):
    """The page's file detection and its messages, for the six sample files (tests/media_factory.py)."""
    from onellm.serving.chat import parse_chat
    from onellm.serving.media import MediaFetcher, MediaPolicy
    from onellm.serving.ui import Turn, Upload, build_messages, detect_modality, file_candidates, resolve_modality

    everything = modality_names()
    detected = {m: detect_modality(media_paths[m], everything) for m in EXTENDED}
    # 16-bit grey PNGs look like depth maps first (ties go to the earlier modality): X-ray and infrared are offered
    # as the next guesses and chosen in the dropdown; the other four are recognised from their content.
    assert detected == {"xray": "depth", "infrared": "depth"} | {m: m for m in EXTENDED[2:]}
    assert [m for _, m in file_candidates(media_paths["xray"])] == ["depth", "xray", "infrared"]
    assert resolve_modality(media_paths["xray"], "xray", everything) == "xray"
    # Only guesses the model takes: without depth the same PNGs are the first of X-ray / infrared it has.
    assert detect_modality(media_paths["xray"], ["image", "xray", "infrared"]) == "xray"
    assert detect_modality(media_paths["infrared"], ["image", "infrared"]) == "infrared"

    _, processor = tiny_all
    uploads = tuple(Upload(media_paths[m], m) for m in EXTENDED)
    messages, files = build_messages([], Turn(uploads, "What are these?"))
    content = messages[0]["content"]
    assert [p["type"] for p in content[:-1]] == [f"input_{m}" for m in EXTENDED]
    assert [content[i][f"input_{m}"]["format"] for i, m in enumerate(EXTENDED)] == [
        "png", "png", "npy", "csv", "json", "json"
    ]  # fmt: skip
    assert files["messages[0].content[5]"] == "molecule.json"
    # Each part is read as its file is from disk: the time series' CSV (with a header row) included.
    parsed = asyncio.run(parse_chat(messages, processor, MediaFetcher(MediaPolicy()), max_inputs=8))
    assert [m for m, _ in parsed.inputs] == EXTENDED
    for (modality, tensor), path in zip(parsed.inputs, (media_paths[m] for m in EXTENDED), strict=True):
        assert tensor.equal(processor.preprocess(modality, path)), modality


@pytest.mark.slow
def test_vllm_engine_matches_hf_on_the_new_modalities(checkpoint_all, tmp_path):
    """vLLM's side of the plugin for the six: its processor (items -> ``{m}_values``), the dummy inputs it profiles
    with at start-up (every modality of the checkpoint), ``embed_multimodal``; greedy tokens equal the hf engine's."""
    pytest.importorskip("vllm")
    inputs = media()
    requests = {m: {"messages": user(part(m, *inputs[m])), "adapter": None, "max_tokens": MAX_TOKENS} for m in EXTENDED}
    mixed = [part(m, *inputs[m]) for m in ("xray", "hyperspectral", "tabular", "graph")]
    requests["four in one prompt"] = {"messages": user(*mixed), "adapter": None, "max_tokens": MAX_TOKENS}
    jobs = [{"checkpoint": str(checkpoint_all), "adapters": {}, "requests": requests}]
    (reference,) = collect("hf", jobs, tmp_path)
    (candidate,) = collect("vllm", jobs, tmp_path)
    for name, result in reference.items():
        assert candidate[name]["prompt_ids"] == result["prompt_ids"], name
        assert candidate[name]["token_ids"] == result["token_ids"], (name, result, candidate[name])
    assert len({tuple(r["token_ids"]) for r in reference.values()}) >= 4  # inputs drive the outputs
