"""``onellm ui CHECKPOINT``: a chat page (Gradio) in front of the engine ``onellm serve`` uses.

    onellm ui runs/tiny/final --engine hf            # then open http://127.0.0.1:7860

One process: uvicorn runs a FastAPI app whose lifespan starts the engine (built from the same flags and by the
same code as ``onellm serve``: :func:`onellm.serving.cli.engine_from_args`), mounts the page at ``/`` and answers
``GET /health`` once the engine is up. A turn is an API request to the same
:class:`~onellm.serving.service.ChatService` that ``onellm serve``'s routes call: the page writes OpenAI chat
messages carrying each uploaded file inline (base64, in the content part type of its modality), and the service
validates and preprocesses them under the same media limits, checks the context length and streams the answer
as tokens arrive (the path behind ``"stream": true``).

Everything but the page layout (:func:`build_page`) is plain Python, tested without a browser.
"""

from __future__ import annotations

import argparse
import base64
import logging
import mimetypes
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from onellm.modalities import get_modality, modality_names
from onellm.serving.cli import (
    add_engine_arguments,
    add_input_limit_arguments,
    check_adapter_names,
    checkpoint_from_args,
    engine_from_args,
    load_processor,
    media_policy_from_args,
    reserve_port,
    run_server,
)
from onellm.serving.errors import APIError
from onellm.serving.protocol import ChatCompletionRequest
from onellm.serving.service import ChatService, ServiceSettings

logger = logging.getLogger("onellm.ui")

AUTO = "auto"
BASE_MODEL = "base model (no adapter)"


class UploadError(ValueError):
    """An uploaded file the page cannot use; the message names the file and says what to do."""


def known_suffixes() -> list[str]:
    """File suffixes some registered modality claims (``Modality.suffixes``)."""
    return sorted({suffix for m in modality_names() for suffix in get_modality(m).suffixes})


def file_candidates(path: Path) -> list[tuple[int, str]]:
    """``(score, modality)`` of every modality the file may hold, best first (ties: curriculum order): each
    modality file judges its own suffixes and content (``Modality.file_match``: PNG modes, .npy shapes)."""
    scored = [
        (get_modality(m).file_match(path), -i, m)
        for i, m in enumerate(modality_names())
        if path.suffix.lower() in get_modality(m).suffixes
    ]
    return [(score, m) for score, _, m in sorted(scored, reverse=True) if score > 0]


def detect_modality(path: Path, modalities: Sequence[str]) -> str:
    """The modality ``path`` most likely holds among those the model takes (:func:`file_candidates`; a 16-bit grey
    PNG is a depth map for a model with depth, an X-ray for one with X-ray but not depth). :class:`UploadError`
    when its type is unknown or it fits none of ``modalities``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in known_suffixes():
        raise UploadError(
            f"{path.name}: unknown file type {suffix or '(no extension)'!r}; known: {' '.join(known_suffixes())}. "
            f"Pick the modality in the dropdown to send it anyway."
        )
    candidates = file_candidates(path)
    if not candidates:
        claiming = [m for m in modality_names() if suffix in get_modality(m).suffixes]
        raise UploadError(
            f"{path.name}: not recognised as any of {', '.join(claiming)} (unreadable, or a shape none of them "
            "takes); pick the modality in the dropdown to send it anyway"
        )
    taken = [m for _, m in candidates if m in modalities]
    if not taken:
        raise UploadError(
            f"{path.name}: looks like a {candidates[0][1]} input, which this model does not take (it takes: "
            f"{', '.join(modalities)}); pick another modality in the dropdown if the guess is wrong"
        )
    return taken[0]


def lookalike(path: Path, modality: str) -> str | None:
    """The next-best modality for a file detected as ``modality`` (a normal map saved as RGB PNG looks like a photo;
    an IMU recording [T, 6] like a point cloud), or None."""
    others = [m for _, m in file_candidates(Path(path)) if m != modality]
    return others[0] if others else None


def resolve_modality(path: Path, choice: str, modalities: Sequence[str]) -> str:
    """The dropdown's ``choice``, or the detected modality when it is ``auto``."""
    if choice == AUTO:
        return detect_modality(path, modalities)
    if choice not in modalities:
        raise UploadError(f"{Path(path).name}: this model does not take {choice} inputs (it takes: {modalities})")
    return choice


@dataclass(frozen=True)
class Upload:
    path: Path
    modality: str


@dataclass(frozen=True)
class Turn:
    """One exchange of the conversation; ``answer`` is what the model said."""

    uploads: tuple[Upload, ...]
    text: str
    answer: str = ""


def media_part(upload: Upload) -> dict[str, Any]:
    """An OpenAI content part carrying the file inline, as an API client sends it: a ``data:`` URL for the
    ``*_url`` part types (``image_url``, ``video_url``), ``{"data": base64, "format": suffix}`` for the others
    (``format`` tells a CSV from a .npy)."""
    modality = get_modality(upload.modality)
    part_type = modality.content_parts[0]
    data = base64.b64encode(upload.path.read_bytes()).decode()
    if modality.url_part:
        mime = mimetypes.guess_type(upload.path.name)[0] or "application/octet-stream"
        return {"type": part_type, part_type: {"url": f"data:{mime};base64,{data}"}}
    return {"type": part_type, part_type: {"data": data, "format": upload.path.suffix.lower().lstrip(".")}}


def build_messages(turns: Sequence[Turn], question: Turn) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """OpenAI chat messages for the conversation so far plus ``question``, and which file each media part holds
    (``{"messages[2].content[0]": "cat.png"}``), to name files in errors."""
    messages: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    for turn in [*turns, question]:
        content: list[dict[str, Any]] = []
        for upload in turn.uploads:
            files[f"messages[{len(messages)}].content[{len(content)}]"] = upload.path.name
            content.append(media_part(upload))
        if turn.text:
            content.append({"type": "text", "text": turn.text})
        messages.append({"role": "user", "content": content})
        if turn is not question:
            messages.append({"role": "assistant", "content": turn.answer})
    return messages, files


_PARAM = re.compile(r"(messages\[\d+\]\.content\[\d+\])(?:\.[a-z_]+)*")


def name_files(message: str, files: dict[str, str]) -> str:
    """An API error message with its ``messages[i].content[j].image_url...`` field names replaced by file names."""
    return _PARAM.sub(lambda match: files.get(match.group(1), match.group(0)), message)


@dataclass
class ChatPage:
    """The page's behaviour, without Gradio: turns a submitted message into streamed chat updates.

    Each turn is a chat request to ``service``, the one behind ``onellm serve``'s API: the same parsing, media
    limits, context check and streamed generation. Chat messages are Gradio's ``{"role", "content"}`` dicts
    (content: text, or ``{"path": ...}`` for a file).
    """

    service: ChatService

    @property
    def modalities(self) -> list[str]:
        return list(self.service.processor.modalities)

    def describe(self, files: Sequence[str], choice: str) -> str:
        """One line per attached file: the modality it will be sent as, or why it cannot be."""
        lines = []
        for name in files:
            path = Path(name)
            try:
                modality = resolve_modality(path, choice, self.modalities)
            except UploadError as exc:
                lines.append(f"`{path.name}` → ⚠️ {exc}")
                continue
            how = "chosen" if choice != AUTO else "detected"
            alike = lookalike(path, modality) if choice == AUTO else None
            if alike in self.modalities:
                how += f"; if it is {alike} data, pick {alike} in the dropdown"
            lines.append(f"`{path.name}` → **{modality}** ({how})")
        return "\n\n".join(lines)

    async def reply(
        self,
        files: Sequence[str],
        text: str,
        chat: list[dict[str, Any]],
        turns: list[Turn],
        choice: str = AUTO,
        max_tokens: int = 128,
        temperature: float = 0.7,
        adapter: str | None = None,
    ) -> AsyncIterator[tuple[list[dict[str, Any]], list[Turn], str]]:
        """Yields ``(chat, turns, status)``: the question at once, then the answer growing as tokens arrive.

        A file or request the server would refuse ends the turn with an error message in the chat; the turn is
        then left out of ``turns``, the conversation the model sees.
        """
        text = (text or "").strip()
        if not files and not text:
            yield chat, turns, "Type a question or attach a file."
            return
        shown: list[Any] = [{"path": str(f)} for f in files] + ([text] if text else [])
        chat = [*chat, *({"role": "user", "content": item} for item in shown)]
        try:
            question = Turn(tuple(self._upload(Path(f), choice) for f in files), text)
        except UploadError as exc:
            yield [*chat, _error(str(exc))], turns, "Not sent."
            return
        answer = {"role": "assistant", "content": ""}
        yield [*chat, answer], turns, "Preprocessing…"
        started = time.monotonic()
        messages, names = build_messages(turns, question)
        body = ChatCompletionRequest(
            model=adapter or self.service.settings.served_model_name,
            messages=messages,
            max_tokens=int(max_tokens),
            temperature=float(temperature),
            stream=True,
            return_token_ids=True,  # the status line counts them
        )
        try:
            call = await self.service.prepare(body, fit_context=True)
        except APIError as exc:
            message = name_files(exc.message, names)
            if exc.code == "context_length_exceeded":
                message += ". Clear the chat to start over."
            yield [*chat, _error(message)], turns, "Not sent."
            return
        except Exception as exc:  # a decoder failing in a way parse_chat does not translate: report, keep the page
            logger.exception("preprocessing failed")
            yield [*chat, _error(f"could not read the input ({type(exc).__name__}: {exc})")], turns, "Not sent."
            return
        tokens, finish = 0, None
        try:
            chunks = await self.service.stream(call)
            async with aclosing(chunks):  # type: ignore[type-var]
                async for chunk in chunks:
                    if any(c.delta.role for c in chunk.choices):
                        continue  # the stream's opening chunk: no text yet
                    for c in chunk.choices:
                        answer = {"role": "assistant", "content": answer["content"] + c.delta.content}
                        tokens += len(c.token_ids or ())
                        finish = c.finish_reason or finish
                    yield [*chat, answer], turns, f"Generating… {tokens} tokens"
        except Exception as exc:  # the engine refused the input (vLLM validation) or failed: say so, keep the page
            logger.exception("generation failed")
            reason = exc.message if isinstance(exc, APIError) else f"{type(exc).__name__}: {exc}"
            yield [*chat, _error(f"generation failed: {reason}")], turns, "Failed."
            return
        seconds = time.monotonic() - started
        said = answer["content"]
        if not said:
            answer = {"role": "assistant", "content": "*(the model ended its answer at once)*"}
        status = (
            f"{tokens} tokens in {seconds:.1f} s ({tokens / max(seconds, 1e-6):.1f} tokens/s) · "
            f"finish: {finish or 'stop'} · prompt: {call.generation.chat.prompt_tokens} tokens · "
            f"engine: {self.service.engine.name}"
        )
        yield [*chat, answer], [*turns, replace(question, answer=said)], status

    def _upload(self, path: Path, choice: str) -> Upload:
        size, limit = path.stat().st_size, self.service.settings.media.max_bytes
        if size > limit:
            raise UploadError(f"{path.name}: {size} bytes, above the {limit}-byte limit per input")
        return Upload(path, resolve_modality(path, choice, self.modalities))


def _error(message: str) -> dict[str, Any]:
    return {"role": "assistant", "content": f"⚠️ **Error:** {message}"}


# --- the page and the app ---------------------------------------------------------------------------------------
def build_page(page: ChatPage, title: str) -> Any:
    """The Gradio Blocks of the chat page (imports Gradio)."""
    import gradio as gr

    with gr.Blocks(title=f"onellm · {title}", analytics_enabled=False) as blocks:
        gr.Markdown(
            f"## onellm · {title}\n"
            f"Attach a file ({', '.join(page.modalities)}), ask about it, and the `{page.service.engine.name}` engine "
            f"answers as it generates. Earlier turns stay in the conversation until you clear it."
        )
        chatbot = gr.Chatbot(
            elem_id="chat", height=520, label="conversation", feedback_options=None, buttons=["copy", "copy_all"]
        )
        status = gr.Markdown(elem_id="chat-status")
        box = gr.MultimodalTextbox(
            elem_id="chat-input",
            file_count="multiple",
            sources=["upload"],
            placeholder="Attach a file and ask a question (Enter sends)",
            show_label=False,
        )
        detected = gr.Markdown(elem_id="detected")
        with gr.Row():
            modality = gr.Dropdown(
                [AUTO, *page.modalities], value=AUTO, label="modality of the attached files", elem_id="modality"
            )
            with gr.Column():
                with gr.Accordion("sampling", open=False):
                    max_tokens = gr.Slider(1, 1024, value=128, step=1, label="max tokens", elem_id="max-tokens")
                    temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="temperature (0 = greedy)")
                    adapter = gr.Dropdown(
                        [(BASE_MODEL, ""), *((name, name) for name in page.service.settings.adapters)],
                        value="",
                        label="LoRA adapter",
                        visible=bool(page.service.settings.adapters),
                    )
                clear = gr.Button("clear the conversation", variant="secondary", size="sm")
        turns = gr.State([])

        def describe(value: dict | None, choice: str) -> str:
            return page.describe((value or {}).get("files") or [], choice)

        async def send(
            value: dict | None, chat: list, history: list, choice: str, limit: float, temp: float, lora: str
        ):
            value = value or {}
            files, text = value.get("files") or [], value.get("text") or ""
            box_update = gr.MultimodalTextbox(value=None, interactive=False)
            replies = page.reply(files, text, chat, history, choice, int(limit), temp, lora or None)
            async for chat, history, line in replies:
                yield chat, history, line, box_update, ""
            yield chat, history, line, gr.MultimodalTextbox(interactive=True), ""

        box.change(describe, [box, modality], detected, show_progress="hidden")
        modality.change(describe, [box, modality], detected, show_progress="hidden")
        # No concurrency limit here: the engine queues (hf: one worker thread) or batches (vllm) by itself.
        box.submit(
            send,
            [box, chatbot, turns, modality, max_tokens, temperature, adapter],
            [chatbot, turns, status, box, detected],
            concurrency_limit=None,
            show_progress="hidden",
        )
        clear.click(lambda: ([], [], ""), None, [chatbot, turns, status])
        chatbot.clear(lambda: ([], ""), None, [turns, status])  # the chat's own bin icon
    return blocks


def build_ui_app(page: ChatPage, title: str) -> Any:
    """A FastAPI app: the engine starts and stops with it (the service's lifespan), ``GET /health`` is the API
    server's, the page is at ``/``."""
    import gradio as gr
    from fastapi import FastAPI

    from onellm.serving.app import add_health_route

    app = FastAPI(title="onellm ui", lifespan=page.service.lifespan)
    add_health_route(app, page.service)
    max_bytes = page.service.settings.media.max_bytes
    return gr.mount_gradio_app(app, build_page(page, title), path="/", ssr_mode=False, max_file_size=max_bytes)


def add_ui_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``ui`` sub-command to an ``argparse`` sub-parser group; it runs :func:`run_ui`."""
    parser = subparsers.add_parser(
        "ui",
        help="a chat web page on a checkpoint (needs the 'ui' extra: gradio)",
        description="A chat page: attach a file of any modality the checkpoint takes, ask, read the streamed "
        "answer. The engine and its flags are onellm serve's.",
    )
    add_engine_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860)
    add_input_limit_arguments(parser.add_argument_group("limits"))
    parser.add_argument("--log-level", default="info")
    parser.set_defaults(func=run_ui)
    return parser


def run_ui(args: argparse.Namespace) -> None:
    """Build the engine and the page from parsed arguments and serve them until interrupted."""
    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError:
        raise SystemExit("onellm ui needs Gradio: pip install 'onellm[ui]'") from None
    import onellm  # noqa: F401  (Auto-class registration)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    checkpoint = checkpoint_from_args(args, "ui")
    sock = reserve_port(args, "ui")
    adapters = tuple(name for name, _ in args.lora)
    check_adapter_names(checkpoint.name, adapters, "ui")
    settings = ServiceSettings(
        served_model_name=checkpoint.name,  # the base model; the page's dropdown picks an adapter by its name
        adapters=adapters,
        max_inputs_per_request=args.max_inputs_per_request,
        media=media_policy_from_args(args),
    )
    service = ChatService(engine_from_args(args, "ui"), load_processor(checkpoint), settings)
    app = build_ui_app(ChatPage(service), checkpoint.name)
    logger.info("chat page at http://%s:%d/ (engine %s)", args.host, args.port, service.engine.name)
    run_server(app, service, args, "ui", sock)


__all__ = [
    "ChatPage",
    "Turn",
    "Upload",
    "UploadError",
    "add_ui_command",
    "build_messages",
    "build_page",
    "build_ui_app",
    "detect_modality",
    "media_part",
]
