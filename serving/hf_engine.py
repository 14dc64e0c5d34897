"""The ``hf`` engine: transformers ``generate`` on the checkpoint's own model, one request at a time.

The fallback when vLLM is not installed and the reference the vLLM engine is tested against (greedy outputs are
identical). Requests queue behind a single worker thread (generation is compute-bound; two CPU generations in
parallel are not faster than one after the other). LoRA adapters are PEFT adapters switched per request.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

import onellm  # noqa: F401  (Auto-class registration)
from onellm.hardware import auto_dtype
from onellm.modeling import mask_placeholder_logits
from onellm.serving.engines import (
    Delta,
    EngineSettings,
    GenerationRequest,
    TokenLogprob,
    adapter_targets_whole_model,
)

_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DONE = object()


class _Cancelled(StoppingCriteria):
    """Stops generation once any of its events is set: the request was cancelled (client gone, timeout) or this
    choice produced a stop string."""

    def __init__(self, *events: threading.Event):
        self.events = events

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        done = any(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class _TokenStreamer(BaseStreamer):
    """Forwards each new token id to the event loop (the first ``put`` is the prompt and is skipped)."""

    def __init__(self, push):
        self.push = push
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.push(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class _LogprobRecorder:
    """Keeps the raw next-token log-probabilities of the latest forward pass (a hook on the LM head, so before
    temperature and top-p, as vLLM's ``raw_logprobs``); the streamer turns them into each generated token's
    :class:`TokenLogprob` with the ``top`` most likely alternatives."""

    def __init__(self, head: torch.nn.Module, top: int, placeholders: list[int]):
        self.top = top
        self.placeholders = placeholders  # never generated: masked as the model masks them
        self.latest: torch.Tensor | None = None
        self.handle = head.register_forward_hook(self._record)

    def _record(self, module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        logits = output[0, -1].float()
        if self.placeholders:
            logits = mask_placeholder_logits(logits, self.placeholders)
        self.latest = logits.log_softmax(-1)

    def take(self, ids: list[int]) -> list[TokenLogprob]:
        assert self.latest is not None and len(ids) == 1, "one sequence, one token per step"
        values, indices = self.latest.topk(self.top)
        top = tuple(zip(indices.tolist(), values.tolist(), strict=True))
        return [TokenLogprob(ids[0], float(self.latest[ids[0]]), top)]


class _TextTracker:
    """Incremental detokenisation with OpenAI/vLLM stop-string semantics (the stop string is not returned).

    Text that could still turn into a stop string (its last ``len(longest stop) - 1`` characters) or that ends in
    an incomplete UTF-8 sequence is held back until it is settled.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.sent = 0  # characters already emitted
        self.stopped = False

    def add(self, new_ids: list[int]) -> str:
        self.ids.extend(new_ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._emit(text, cut)
        # Hold back what could still become a stop string and a trailing incomplete UTF-8 sequence (U+FFFD).
        end = min(len(text) - self.holdback, len(text.rstrip("\ufffd")))
        return self._emit(text, end)

    def finish(self) -> str:
        # A trailing incomplete UTF-8 sequence is dropped, as vLLM's incremental detokenizer does.
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).rstrip("\ufffd")
        return "" if self.stopped else self._emit(text, len(text))

    def _emit(self, text: str, end: int) -> str:
        if end <= self.sent:
            return ""
        piece, self.sent = text[self.sent : end], end
        return piece


class HFEngine:
    name = "hf"

    def __init__(self, settings: EngineSettings):
        self.settings = settings
        self.model: Any = None
        self.device = torch.device("cpu")
        self.peft: Any = None
        self.tokenizer: Any = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-generate")
        self._unfinished = 0  # requests submitted to the worker and not yet returned from it

    @property
    def max_model_len(self) -> int:
        return self.settings.max_model_len or int(self.model.config.text_config.max_position_embeddings)

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._worker, self._load)

    async def stop(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    def num_unfinished(self) -> int:
        return self._unfinished

    def failure(self) -> str | None:
        return None  # generation runs in this process: a crash of it is the server's own

    def _load(self) -> None:
        if self.settings.dtype not in _DTYPES:
            raise ValueError(
                f"--dtype {self.settings.dtype!r} is not supported by the hf engine; use one of {list(_DTYPES)}"
            )
        checkpoint = str(self.settings.checkpoint)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # Leave one core to the HTTP server (event loop, media decoding), as vLLM's CPU worker does. On a busy
            # 2-core machine two OpenMP threads made the tiny model's generate 10x slower than one (barrier waits).
            torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=_DTYPES[self.settings.dtype])
        if self.settings.dtype == "auto":  # a float32 checkpoint in bf16 where bf16 is native, as vLLM serves it
            model = model.to(getattr(torch, auto_dtype(self.device.type, str(model.dtype))))
        self.model = model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        if self.settings.adapters:
            self._load_adapters()

    def _load_adapters(self) -> None:
        """Every adapter into one PEFT wrapper of the whole model; adapters trained on the bare LLM are moved under
        ``language_model.`` first (their weight names and target modules), so both kinds can be served together.

        PEFT injects the LoRA layers into self.model's modules in place: self.model keeps generating, the wrapper
        switches adapters.
        """
        from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
        from peft.utils import load_peft_weights

        for name, path in self.settings.adapters.items():
            config = PeftConfig.from_pretrained(str(path))
            state = load_peft_weights(str(path), device="cpu")
            if not adapter_targets_whole_model(path):
                state = {_under_language_model(key): value for key, value in state.items()}
                config.target_modules = _targets_under_language_model(config.target_modules)
            if self.peft is None:
                self.peft = get_peft_model(self.model, config, adapter_name=name)
            else:
                self.peft.add_adapter(name, config)
            result = set_peft_model_state_dict(self.peft, state, adapter_name=name)
            if result.unexpected_keys:
                raise ValueError(
                    f"--lora {name}: {len(result.unexpected_keys)} adapter weights match no module of this model, "
                    f"e.g. {result.unexpected_keys[0]!r}; was it trained on this checkpoint?"
                )
        self.peft.to(self.device).eval()

    # --- generation -------------------------------------------------------------------------------
    def _run(self, request: GenerationRequest, cancel: threading.Event, push) -> None:
        """Worker thread: all choices of one request, one after another, pushing token ids as they come."""
        if cancel.is_set():
            push(_DONE)
            return
        chat, sampling = request.chat, request.sampling
        input_ids = torch.tensor([chat.expanded_ids], device=self.device)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_inputs": {m: t.to(self.device) for m, t in chat.mm_inputs().items()} or None,
            "max_new_tokens": sampling.max_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if sampling.min_tokens:
            kwargs["min_new_tokens"] = sampling.min_tokens
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        recorder = None
        if sampling.logprobs is not None:
            recorder = _LogprobRecorder(
                self.model.get_output_embeddings(),
                sampling.logprobs,
                list(self.model.config.modality_token_ids.values()),
            )
        try:
            with torch.inference_mode(), self._adapter(request.adapter):
                for index in range(sampling.n):
                    if cancel.is_set():
                        break
                    stop_choice = threading.Event()
                    push(("start", index, stop_choice))
                    self.model.generate(
                        **kwargs,
                        stopping_criteria=StoppingCriteriaList([_Cancelled(cancel, stop_choice)]),
                        streamer=_TokenStreamer(
                            lambda ids, i=index: push(("tokens", i, ids, recorder.take(ids) if recorder else []))
                        ),
                    )
                    push(("end", index))
        except Exception as exc:  # surfaced to the request's task
            push(exc)
        finally:
            if recorder is not None:
                recorder.handle.remove()
            push(_DONE)

    def _adapter(self, name: str | None):
        if self.peft is None:
            if name is not None:
                raise ValueError(f"no LoRA adapter {name!r} is loaded")
            return _nullcontext()
        if name is None:
            return self.peft.disable_adapter()
        self.peft.set_adapter(name)
        return _nullcontext()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[list[Delta]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def push(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        eos = set(_as_list(self.model.generation_config.eos_token_id))
        self._unfinished += 1
        future = loop.run_in_executor(self._worker, self._run, request, cancel, push)
        future.add_done_callback(lambda _: setattr(self, "_unfinished", self._unfinished - 1))
        tracker: _TextTracker | None = None
        stop_choice: threading.Event | None = None
        index = 0
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, Exception):
                    raise item
                kind = item[0]
                if kind == "start":
                    index, stop_choice = item[1], item[2]
                    tracker = _TextTracker(self.tokenizer, request.sampling.stop)
                elif kind == "tokens" and tracker is not None and not tracker.stopped:
                    ids, logprobs = item[2], item[3]
                    text = tracker.add(ids)
                    if tracker.stopped:
                        stop_choice.set()  # this choice is done; the worker moves on to the next one
                        yield [Delta(index, text, ids, "stop", logprobs)]
                    else:
                        yield [Delta(index, text, ids, logprobs=logprobs)]
                elif kind == "end" and tracker is not None:
                    if not tracker.stopped:
                        finish = "stop" if tracker.ids and tracker.ids[-1] in eos else "length"
                        yield [Delta(index, tracker.finish(), [], finish)]
        finally:
            cancel.set()  # a running generation stops at its next step; a queued one is skipped by the worker


def _under_language_model(key: str) -> str:
    """``base_model.model.model.layers...`` (an adapter of the bare LLM) -> ``base_model.model.language_model...``."""
    prefix = "base_model.model."
    return prefix + "language_model." + key[len(prefix) :] if key.startswith(prefix) else "language_model." + key


def _targets_under_language_model(targets: Any) -> str:
    """The bare LLM's target modules (names or a regex) as a regex over the whole model's module names."""
    if isinstance(targets, str):
        return rf"language_model\.(?:{targets})"
    names = "|".join(re.escape(t) for t in targets)
    return rf"language_model\..*\.(?:{names})"


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
