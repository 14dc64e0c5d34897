"""Parity: greedy token ids of the vllm engine equal those of the hf engine (the reference), prompt by prompt.

Both run the tiny checkpoint in fp32 on the CPU. The embeddings of every modality come from the same torch modules
(the vLLM model borrows the HF model's modality path), the LLM from two implementations (vLLM's Llama and
transformers'); the tiny LLM is input-sensitive (see conftest.checkpoint), so a dropped or misplaced input, a wrong
placeholder count or a wrong adapter shows up as a different continuation.
"""

from __future__ import annotations

import pytest
from openai import OpenAI

pytestmark = pytest.mark.slow
MAX_TOKENS = 24


def _ids(server, model: str, messages: list, api_key: str) -> list[int]:
    client = OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0, timeout=120)
    response = client.chat.completions.create(
        model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0, extra_body={"return_token_ids": True}
    )
    return response.choices[0].model_extra["token_ids"]


def test_greedy_outputs_identical_across_engines(hf_server, vllm_server, media, parts, kit):
    point = {"type": "input_point_cloud", "input_point_cloud": {"data": parts.b64(media["point"]), "format": "npy"}}
    imu = {"type": "input_imu", "input_imu": {"data": parts.b64(media["imu"]), "format": "npy", "sample_rate": 50}}
    cases = {
        "text only": ("tiny", [{"role": "user", "content": "Describe a red circle."}]),
        "image": ("tiny", parts.user(parts.image(media["png"]))),
        "other image": ("tiny", parts.user(parts.image(media["png2"]))),
        "audio": ("tiny", parts.user(parts.audio(media["wav"]))),
        "image + audio": ("tiny", parts.user(parts.image(media["png"]), parts.audio(media["wav"]))),
        "point + imu": ("tiny", parts.user(point, imu)),
        "two turns": (
            "tiny",
            [
                {"role": "system", "content": "Answer briefly."},
                *parts.user(parts.image(media["png"])),
                {"role": "assistant", "content": "a square"},
                *parts.user(parts.audio(media["wav"]), text="And this?"),
            ],
        ),
        "lora + image": (kit.LORA_NAME, parts.user(parts.image(media["png"]))),
        "bare-LLM lora + audio": (kit.BARE_LORA_NAME, parts.user(parts.audio(media["wav"]))),
    }
    mismatches = []
    for name, (model, messages) in cases.items():
        reference = _ids(hf_server, model, messages, kit.API_KEY)
        candidate = _ids(vllm_server, model, messages, kit.API_KEY)
        assert len(reference) == MAX_TOKENS or reference[-1] == 2, name  # ran to the limit or to <|im_end|>
        if candidate != reference:
            first = next(
                (i for i, (a, b) in enumerate(zip(reference, candidate, strict=False)) if a != b),
                min(len(reference), len(candidate)),
            )
            mismatches.append(f"{name}: first difference at token {first}: hf {reference} vs vllm {candidate}")
    assert not mismatches, "\n".join(mismatches)


def test_logprobs_agree_across_engines(hf_server, vllm_server, media, parts, kit):
    """Both engines report the raw model distribution: the same top tokens with log-probabilities within 1e-3."""
    messages = parts.user(parts.image(media["png"]), parts.audio(media["wav"]))
    entries = []
    for server in (hf_server, vllm_server):
        client = OpenAI(base_url=f"{server.url}/v1", api_key=kit.API_KEY, max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=5
        )
        entries.append([[(t.token, t.logprob) for t in e.top_logprobs] for e in reply.choices[0].logprobs.content])
    reference, candidate = entries
    assert [[t for t, _ in e] for e in candidate] == [[t for t, _ in e] for e in reference]
    for ref, cand in zip(reference, candidate, strict=True):
        assert [lp for _, lp in cand] == pytest.approx([lp for _, lp in ref], abs=1e-3)
