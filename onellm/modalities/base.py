"""The contract every modality file fulfils, and the helpers they share."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

# What a modality input may be: a file path, the file's bytes, or an already-decoded array.
Source = str | os.PathLike | bytes | np.ndarray | torch.Tensor


# Why an input could not be used: MediaError.reason, one of these codes (the data loader counts rejections by it).
MISSING_FILE = "missing file"
UNDECODABLE = "undecodable"
WRONG_SHAPE = "wrong shape"
NAN = "NaN"
TOO_LONG = "too long"
MEDIA_REASONS = (MISSING_FILE, UNDECODABLE, WRONG_SHAPE, NAN, TOO_LONG)

# The sets a modality belongs to (``Modality.group``). Presets, ``onellm data synth`` and the default curricula build
# the default sets unless asked for more (``modalities: all``, a set name or a list of names):
ONELLM_SET = "onellm"  # OneLLM's eight; the official 7b layout (and its converter) is exactly these
EXTENDED_SET = "extended"  # Meta-Transformer's six beyond them (X-ray ... graph): opt-in
PLUGIN_SET = "plugin"  # the base class's value: a modality from another package, built by default
MODALITY_SETS = (ONELLM_SET, EXTENDED_SET, PLUGIN_SET)
DEFAULT_SETS = (ONELLM_SET, PLUGIN_SET)


class MediaError(ValueError):
    """A modality input could not be used. The message names the input and the problem; ``reason`` is its code
    (one of ``MEDIA_REASONS``)."""

    def __init__(self, modality: str, source: str, problem: str, reason: str = UNDECODABLE):
        if reason not in MEDIA_REASONS:
            raise ValueError(f"MediaError reason {reason!r} is not one of {MEDIA_REASONS}")
        self.modality = modality
        self.source = source
        self.problem = problem
        self.reason = reason
        super().__init__(f"{modality} input {source}: {problem}")


def describe_source(source: Source) -> str:
    """A short name for an input, for error messages: the path, or the kind and size of the data."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return f"<array {tuple(source.shape)}>"
    return f"<{type(source).__name__}>"


def class_position(width: int, enabled: bool) -> nn.Parameter | None:
    """A tokenizer's own position for the encoder's class token (``[C]``), or None to keep the encoder's.

    OneLLM gives audio, point, IMU and fMRI one position table covering the class token and the input tokens; a
    tokenizer built with ``class_position`` option on keeps that table's first row here, and the encoder adds it to
    the class token (:meth:`onellm.encoder.UniversalEncoder.forward`)."""
    return nn.Parameter(torch.zeros(width)) if enabled else None


def npy_shape(path: Path) -> tuple[int, ...] | None:
    """The shape a ``.npy`` file's header announces (the data is not read), or None when it is not one."""
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except Exception:  # numpy raises several types for malformed files
        return None


def npy_header_shape(data: bytes) -> tuple[int, ...] | None:
    """The shape the header of ``.npy`` bytes announces (nothing else is parsed), or None when they are not one."""
    if data[:6] != b"\x93NUMPY":
        return None
    try:
        stream = io.BytesIO(data)
        major, _ = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read(stream)
    except Exception:  # a malformed header: preprocess reports it
        return None
    return tuple(shape)


def signed_log(values: np.ndarray) -> np.ndarray:
    """``sign(x) * log(1 + |x|)``: any real number to a range a Linear layer takes (1e6 -> 13.8, 1e38 -> 87.5),
    monotonic, exact near zero; for values whose scale is unknown in advance (table cells, series levels)."""
    values = np.asarray(values, dtype=np.float64)
    return np.sign(values) * np.log1p(np.abs(values))


def pick_variant(modality: str, option: str, value: str, variants: dict[str, Any]) -> Any:
    """``variants[value]``, or an error naming the modality option and the known values."""
    if value not in variants:
        raise ValueError(f"modality {modality!r}: option {option}={value!r} is not one of {sorted(variants)}")
    return variants[value]


class Modality:
    """Base class. Subclasses set the class attributes and implement the three methods."""

    name: ClassVar[str] = ""
    # The set it belongs to (one of MODALITY_SETS): OneLLM's eight, the opt-in extended six, or a plugin's (default).
    group: ClassVar[str] = PLUGIN_SET
    # Curriculum order (image first); also the order of `modality_names()`.
    order: ClassVar[int] = 100
    # True when the tokenizer is the encoder's own (frozen) patch embedding.
    image_like: ClassVar[bool] = False
    # Preprocessing and tokenizer options with their defaults; presets override them per model.
    defaults: ClassVar[dict[str, Any]] = {}
    # Options per preset family ("tiny", "small", "7b"); a family not listed uses ``defaults``.
    preset_options: ClassVar[dict[str, dict[str, Any]]] = {}
    # How prompts name it ("Provide a one-sentence caption for the provided point cloud."); "" = the name.
    noun: ClassVar[str] = ""
    # The OpenAI chat content parts it arrives in (the first is what clients send; () = ("input_<name>",)) and
    # whether such a part holds ``{"url": ...}`` (image_url, video_url) instead of ``{"data": base64, "format"}``.
    part_types: ClassVar[tuple[str, ...]] = ()
    url_part: ClassVar[bool] = False
    # File suffixes of its usual file types (the chat page guesses a file's modality from them, see file_match).
    suffixes: ClassVar[tuple[str, ...]] = ()
    # Optional per-input keys a record or a content part may carry for it: "sample_rate", "rgb_path".
    extra_keys: ClassVar[tuple[str, ...]] = ()

    @property
    def marker(self) -> str:
        """Text placeholder marking where an input goes in a prompt, e.g. ``<image>``."""
        return f"<{self.name}>"

    def options(self, **overrides: Any) -> dict[str, Any]:
        """Defaults merged with ``overrides``; an unknown key is an error naming it."""
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise KeyError(f"modality {self.name!r} has no option(s) {unknown}; known: {sorted(self.defaults)}")
        return {**self.defaults, **overrides}

    @property
    def default_set(self) -> bool:
        """Whether presets, ``onellm data synth`` and the default curricula include it unless asked otherwise."""
        return self.group in DEFAULT_SETS

    @property
    def prompt_noun(self) -> str:
        return self.noun or self.name

    @property
    def content_parts(self) -> tuple[str, ...]:
        return self.part_types or (f"input_{self.name}",)

    def preset(self, family: str) -> dict[str, Any]:
        """The options preset family ``family`` uses (validated): its own entry, else the defaults."""
        return self.options(**self.preset_options.get(family, {}))

    def precheck(self, data: bytes, limits: dict[str, float]) -> str | None:
        """A cheap look at an input's raw bytes before it is decoded (a server refuses what breaks ``limits``, e.g.
        ``max_image_pixels``, ``max_audio_seconds``): the problem, or None. Decoding errors are left to preprocess."""
        return None

    def encode_array(self, array: np.ndarray, extras: dict | None = None) -> tuple[bytes, str]:
        """An in-memory input as file bytes and their format (to send it to an API): ``.npy`` unless overridden."""
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
        return buffer.getvalue(), "npy"

    def file_match(self, path: Path) -> int:
        """How strongly a file of one of :attr:`suffixes` looks like this modality, from the file itself (0: not at
        all). The chat page picks the highest score (ties: curriculum order); the default claims its suffixes."""
        return 1 if path.suffix.lower() in self.suffixes else 0

    # --- the contract -------------------------------------------------------------------------
    def preprocess(self, source: Source, extras: dict | None = None, **options: Any) -> torch.Tensor:
        """Decode and normalise one input to a float32 tensor of shape ``input_shape(**options)``.

        ``extras`` carries per-input facts from the record (e.g. an IMU array's ``sample_rate``).
        """
        raise NotImplementedError

    def input_shape(self, **options: Any) -> tuple[int, ...]:
        """Shape of one preprocessed input (no batch dimension)."""
        raise NotImplementedError

    def build_tokenizer(self, width: int, patch_size: int, **options: Any) -> nn.Module:
        """Module mapping ``[B, *input_shape]`` (+ the encoder) to tokens ``[B', L, width]``.

        ``patch_size`` is the encoder's; image-like modalities use the encoder's patch embedding.
        """
        raise NotImplementedError

    def dummy_input(self, **options: Any) -> torch.Tensor:
        """A preprocessed input of the right shape and a plausible range (profiling, vLLM dummies)."""
        generator = torch.Generator().manual_seed(0)
        return torch.randn(self.input_shape(**options), generator=generator)

    def query_grid(self, **options: Any) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """How ``queries: pooled`` (projectors/queries.py) cuts an input's L encoded tokens into the N regions it
        averages: ``((rows, cols) of the tokens, (rows, cols) of the regions)``; None (the default): a square grid into
        square regions, any other sequence into N runs of consecutive tokens."""
        return None

    def pool_encoded(self, encoded: torch.Tensor, batch: int, **options: Any) -> torch.Tensor:
        """Fold encoder outputs ``[B', 1+L, C]`` back to one sequence per input ``[B, 1+L, C]``.

        Identity except for modalities whose tokenizer emits several sequences per input (video frames).
        """
        return encoded

    # --- helpers for subclasses ---------------------------------------------------------------
    def fail(self, source: Source, problem: str, reason: str = UNDECODABLE) -> MediaError:
        return MediaError(self.name, describe_source(source), problem, reason)

    def read_bytes(self, source: Source) -> bytes:
        """The raw bytes of a path or bytes source; a clear error when the file is missing or empty."""
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise self.fail(source, "file not found", MISSING_FILE)
            data = path.read_bytes()
        else:
            raise self.fail(source, f"expected a file path or bytes, got {type(source).__name__}", WRONG_SHAPE)
        if not data:
            raise self.fail(source, "file is empty")
        return data

    def load_array(self, source: Source) -> np.ndarray:
        """A numeric array from an array, a tensor, a ``.npy`` file/bytes, or a ``.csv`` file."""
        if isinstance(source, torch.Tensor):
            array = source.detach().cpu().numpy()
        elif isinstance(source, np.ndarray):
            array = source
        else:
            data = self.read_bytes(source)
            is_csv = isinstance(source, (str, os.PathLike)) and str(source).lower().endswith(".csv")
            try:
                if is_csv:
                    array = np.loadtxt(io.StringIO(data.decode("utf-8")), delimiter=",", ndmin=2)
                else:
                    array = np.load(io.BytesIO(data), allow_pickle=False)
            except Exception as exc:  # numpy raises several types for malformed files
                kind = "CSV" if is_csv else ".npy"
                raise self.fail(source, f"not a readable {kind} array ({exc})") from None
        if not np.issubdtype(array.dtype, np.number):
            raise self.fail(source, f"expected a numeric array, found dtype {array.dtype}", WRONG_SHAPE)
        return array.astype(np.float32, copy=False)

    def read_csv(self, source: Source, data: bytes) -> list[list[str]]:
        """The non-blank rows of CSV bytes (UTF-8, comma-separated, cells stripped); a clear error when they are not
        text or the rows are ragged."""
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise self.fail(source, "not a readable CSV table (not UTF-8 text)") from None
        rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text)) if any(c.strip() for c in row)]
        if not rows:
            raise self.fail(source, "the CSV table has no rows")
        widths = sorted({len(row) for row in rows})
        if len(widths) > 1:
            raise self.fail(source, f"ragged CSV table: rows have {widths} cells", WRONG_SHAPE)
        return rows

    def check_finite(self, source: Source, array: np.ndarray | torch.Tensor) -> None:
        bad = ~np.isfinite(array) if isinstance(array, np.ndarray) else ~torch.isfinite(array)
        if bad.any():
            raise self.fail(source, f"contains {int(bad.sum())} NaN/inf value(s)", NAN)
