"""Audio: decode (soundfile, PyAV fallback) -> mono 16 kHz -> 128-bin Kaldi fbank, padded/cut, normalised.

Tokenizer: Conv2d over the [1, 128, T] fbank "image" + a learned position table (OneLLM's audio path).
With OneLLM's numbers (T = 1024 frames of 10 ms, kernel 16, stride 10): 12 x 101 = 1212 tokens.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
from typing import Any

import av
import numpy as np
import soundfile
import torch
from torch import nn

from onellm.modalities import register_modality
from onellm.modalities.base import ONELLM_SET, TOO_LONG, WRONG_SHAPE, Modality, Source, class_position

SAMPLE_RATE = 16_000
# AudioSet statistics of the 128-bin fbank (the AST convention OneLLM follows).
FBANK_MEAN = -4.2677393
FBANK_STD = 4.5689974


@functools.lru_cache(maxsize=8)
def fbank_extractor(num_mel_bins: int, target_length: int):
    """transformers' Kaldi-compatible fbank (numpy path; no torchaudio), built once per shape."""
    from transformers import ASTFeatureExtractor

    with warnings.catch_warnings():
        # Kaldi's 128-bin filterbank over a 512-point FFT leaves the lowest filters empty; that is expected.
        warnings.simplefilter("ignore", UserWarning)
        return ASTFeatureExtractor(
            num_mel_bins=num_mel_bins, max_length=target_length, sampling_rate=SAMPLE_RATE, do_normalize=False
        )


def resample(waveform: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 waveform at ``rate`` -> ``target`` Hz through libswresample (PyAV)."""
    if rate == target:
        return waveform
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(waveform[None, :], np.float32), format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    chunks = [f.to_ndarray()[0] for f in resampler.resample(frame)] + [
        f.to_ndarray()[0] for f in resampler.resample(None)
    ]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def audio_seconds(data: bytes) -> float | None:
    """The duration a container header announces, or None when it cannot be read without decoding."""
    try:
        info = soundfile.info(io.BytesIO(data))
        if info.samplerate > 0 and info.frames > 0:
            return info.frames / info.samplerate
    except Exception:  # not a libsndfile format; try FFmpeg's demuxer
        pass
    try:
        with av.open(io.BytesIO(data)) as container:
            if container.duration:
                return container.duration / 1_000_000  # av.time_base is microseconds
    except Exception:
        return None
    return None


def wav_truncation(data: bytes) -> str | None:
    """For RIFF/WAVE bytes: a description of the problem when the data chunk is shorter than its header says."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        if chunk_id == b"data":
            available = len(data) - offset - 8
            # 0xFFFFFFFF and 0 mark streamed WAVs whose size was never written; those are read as they are.
            if size not in (0, 0xFFFFFFFF) and available < size:
                return f"truncated WAV: the header announces {size} bytes of audio, the file holds {available}"
            return None
        offset += 8 + size + (size & 1)
    return "truncated WAV: no data chunk"


class AudioTokenizer(nn.Module):
    """fbank ``[B, 1, M, T]`` -> ``[B, L, C]`` with L = ((M-k)//s+1) * ((T-k)//s+1), plus a learned position table."""

    def __init__(
        self,
        width: int,
        num_mel_bins: int,
        target_length: int,
        kernel: int,
        stride: int,
        own_class_position: bool = False,
    ):
        super().__init__()
        self.conv = nn.Conv2d(1, width, kernel_size=kernel, stride=stride)
        self.grid = ((num_mel_bins - kernel) // stride + 1, (target_length - kernel) // stride + 1)
        self.positions = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], width) * 0.02)
        self.class_position = class_position(width, own_class_position)

    def forward(self, fbank: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        tokens = self.conv(fbank.to(self.conv.weight.dtype)).flatten(2).transpose(1, 2)
        return tokens + self.positions

    @torch.no_grad()
    def init_from_encoder(self, encoder: nn.Module) -> None:
        """Start from the encoder's own patch embedding, as AST starts from an ImageNet ViT: the fbank is read as a
        grey image, so the kernel is the sum of the RGB kernels (a grey pixel is R = G = B), resized to this kernel
        with its response to a flat patch kept; the position table is the encoder's, resized to this tokenizer's
        grid of patches (mel bands x frames)."""
        patch = encoder.parts.patch_embed
        grey = patch.weight.float().sum(dim=1, keepdim=True)
        size = self.conv.kernel_size
        resized = nn.functional.interpolate(grey, size=size, mode="bilinear", align_corners=False)
        resized *= grey.shape[-2] * grey.shape[-1] / (size[0] * size[1])
        self.conv.weight.copy_(resized.to(self.conv.weight.dtype))
        self.conv.bias.copy_(patch.bias if patch.bias is not None else torch.zeros_like(self.conv.bias))
        self.positions.copy_(encoder.grid_positions(*self.grid).reshape(self.positions.shape).to(self.positions.dtype))


@register_modality
class AudioModality(Modality):
    name = "audio"
    group = ONELLM_SET
    order = 2
    # target_length frames of 10 ms: 1024 (~10 s) in OneLLM; presets for CPU training use a few seconds.
    # class_position: the position table also covers the encoder's class token (OneLLM's layout).
    defaults = {
        "num_mel_bins": 128,
        "target_length": 1024,
        "kernel": 16,
        "stride": 10,
        "max_seconds": 600.0,
        "class_position": False,
        # The regions (mel bands x time spans) the pooled queries average, as [rows, cols]; None: runs of tokens in
        # order, i.e. one mel band over a stretch of time each (see query_grid). Measured on the small preset, not the
        # default: [4, 4] and [2, 8] left what the soft tokens carry as it was (linear probes: kind 0.95, pitch
        # 0.94-0.99, length 0.87-0.92, count 0.56-0.65) and audio QA after instruct within a run's spread
        # (BENCHMARKS.md, "The demo", 2026-12-06 midday).
        "query_grid": None,
    }
    # tiny: 1.28 s -> 8 x 8 = 64 tokens; small: 2.56 s -> 8 x 16 = 128 tokens; 7b: OneLLM's 10 s -> 12 x 101 tokens.
    preset_options = {
        "tiny": {"target_length": 128, "kernel": 16, "stride": 16},
        "small": {"target_length": 256, "kernel": 16, "stride": 16},
        "7b": {"num_mel_bins": 128, "target_length": 1024, "kernel": 16, "stride": 10, "class_position": True},
    }
    part_types = ("input_audio", "audio_url")
    suffixes = (".wav", ".flac", ".ogg", ".mp3", ".m4a")
    extra_keys = ("sample_rate",)

    def precheck(self, data: bytes, limits: dict[str, float]) -> str | None:
        """Refuse audio whose container header announces more than ``max_audio_seconds`` (nothing is decoded)."""
        seconds, limit = audio_seconds(data), limits.get("max_audio_seconds")
        if seconds is not None and limit is not None and seconds > limit:
            return f"audio is {seconds:.1f} s long, above the server's {limit:g} s limit"
        return None

    def encode_array(self, array: np.ndarray, extras: dict | None = None) -> tuple[bytes, str]:
        """A waveform as 16-bit WAV at its ``sample_rate`` (default 16 kHz)."""
        buffer = io.BytesIO()
        rate = int((extras or {}).get("sample_rate", SAMPLE_RATE))
        soundfile.write(buffer, np.asarray(array, dtype=np.float32), rate, format="WAV", subtype="PCM_16")
        return buffer.getvalue(), "wav"

    def query_grid(self, **options: Any) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """The tokenizer's grid of patches (mel bands x frames) and the option ``query_grid``'s regions over it."""
        opts = self.options(**options)
        if opts["query_grid"] is None:
            return None
        kernel, stride = opts["kernel"], opts["stride"]
        grid = ((opts["num_mel_bins"] - kernel) // stride + 1, (opts["target_length"] - kernel) // stride + 1)
        rows, cols = (int(n) for n in opts["query_grid"])
        return grid, (rows, cols)

    def input_shape(self, **options: Any) -> tuple[int, ...]:
        opts = self.options(**options)
        return (1, opts["num_mel_bins"], opts["target_length"])

    def decode(self, source: Source) -> tuple[np.ndarray, int]:
        """Bytes/path -> (mono float32 waveform, sample rate)."""
        data = self.read_bytes(source)
        problem = wav_truncation(data)
        if problem:
            raise self.fail(source, problem)
        try:
            waveform, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
            return waveform.mean(axis=1), int(rate)
        except (soundfile.LibsndfileError, RuntimeError, TypeError):
            pass  # not a libsndfile format (m4a, webm, ...): try FFmpeg
        try:
            with av.open(io.BytesIO(data)) as container:
                if not container.streams.audio:
                    raise self.fail(source, "no audio stream in the file")
                resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
                chunks = [
                    out.to_ndarray()[0] for frame in container.decode(audio=0) for out in resampler.resample(frame)
                ]
                chunks += [out.to_ndarray()[0] for out in resampler.resample(None)]
        except (av.error.FFmpegError, ValueError) as exc:
            raise self.fail(source, f"not a decodable audio file ({exc})") from None
        if not chunks:
            raise self.fail(source, "the audio stream has no samples")
        return np.concatenate(chunks), SAMPLE_RATE

    def preprocess(self, source: Source, extras: dict | None = None, **options: Any) -> torch.Tensor:
        opts = self.options(**options)
        if isinstance(source, (np.ndarray, torch.Tensor)):
            waveform = self.load_array(source)
            if waveform.ndim == 2:  # [samples, channels]
                waveform = waveform.mean(axis=1)
            if waveform.ndim != 1:
                raise self.fail(
                    source,
                    f"expected a [samples] or [samples, channels] waveform, found {list(waveform.shape)}",
                    WRONG_SHAPE,
                )
            rate = int((extras or {}).get("sample_rate", SAMPLE_RATE))
        else:
            waveform, rate = self.decode(source)
        self.check_finite(source, waveform)
        if waveform.size < 400:  # one 25 ms Kaldi window at 16 kHz
            raise self.fail(source, f"too short: {waveform.size} samples, need at least one 25 ms window", WRONG_SHAPE)
        if waveform.size / rate > opts["max_seconds"]:
            raise self.fail(
                source, f"{waveform.size / rate:.1f} s is longer than the {opts['max_seconds']} s limit", TOO_LONG
            )
        waveform = resample(waveform, rate)
        extractor = fbank_extractor(opts["num_mel_bins"], opts["target_length"])
        fbank = extractor(waveform.astype(np.float32), sampling_rate=SAMPLE_RATE, return_tensors="np")
        fbank = fbank["input_values"][0]  # [T, M], zero-padded or cut to target_length
        fbank = (fbank - FBANK_MEAN) / (FBANK_STD * 2)  # AST's normalisation
        return torch.from_numpy(np.ascontiguousarray(fbank.T, np.float32)).unsqueeze(0)

    def build_tokenizer(self, width: int, patch_size: int, **options: Any) -> nn.Module:
        opts = self.options(**options)
        return AudioTokenizer(
            width, opts["num_mel_bins"], opts["target_length"], opts["kernel"], opts["stride"], opts["class_position"]
        )
