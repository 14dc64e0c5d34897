"""The media policy: data URLs, address classification, http(s) fetching against a real local HTTP server, file:."""

from __future__ import annotations

import asyncio
import base64
import http.server
import threading
import time
from pathlib import Path

import pytest
from media_factory import png_bytes, wav_bytes

from onellm.modalities import get_modality
from onellm.modalities.audio import audio_seconds
from onellm.serving.errors import APIError
from onellm.serving.media import (
    MediaFetcher,
    MediaPolicy,
    decode_data_url,
    is_public_address,
)


def fetch(policy: MediaPolicy, url: str) -> bytes:
    return asyncio.run(MediaFetcher(policy).fetch(url, "messages[0].content[0].image_url.url"))


def refused(policy: MediaPolicy, url: str) -> APIError:
    with pytest.raises(APIError) as info:
        fetch(policy, url)
    assert info.value.param == "messages[0].content[0].image_url.url"
    return info.value


# --- data: URLs -------------------------------------------------------------------------------------
def test_data_urls():
    payload = png_bytes()
    assert decode_data_url(f"data:image/png;base64,{base64.b64encode(payload).decode()}", "p", 1 << 20) == payload
    for url, word in [
        ("data:image/png;base64,@@@", "malformed base64"),
        ("data:image/png;base64,QUJ", "malformed base64"),  # missing padding
        ("data:text/plain,hello", "base64-encoded"),
        ("data:image/png;base64", "no ','"),
        ("data:image/png;base64,", "empty"),
    ]:
        with pytest.raises(APIError) as info:
            decode_data_url(url, "p", 1 << 20)
        assert info.value.status == 400 and word in info.value.message, url
    with pytest.raises(APIError) as info:
        decode_data_url("data:image/png;base64," + "A" * 4000, "p", 1000)
    assert info.value.status == 413


@pytest.mark.parametrize(
    "address, public",
    [
        ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
        ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
        ("::1", False), ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False),
        ("8.8.8.8", True), ("1.1.1.1", True), ("2606:4700:4700::1111", True), ("::ffff:8.8.8.8", True),
    ],
)  # fmt: skip
def test_public_address_classification(address, public):
    assert is_public_address(address) is public


# --- http(s): against a real server on 127.0.0.1 -------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path == "/image.png":
            self._send(png_bytes())
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/image.png")
            self.end_headers()
        elif self.path == "/big":
            self._send(b"x" * 50_000)
        elif self.path == "/big-chunked":  # no Content-Length: the cap must hold while streaming
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"3e8\r\n" + b"y" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/slow":
            time.sleep(3)
            self._send(b"late")
        else:
            self.send_error(404)

    def _send(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def origin():
    """A local HTTP origin; the fetcher may reach it only with allow_private_addresses (loopback)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_private_addresses_are_refused(origin):
    policy = MediaPolicy(allowed_domains=frozenset({"127.0.0.1", "localhost"}))
    assert "non-public address" in refused(policy, f"{origin}/image.png").message
    assert "non-public address" in refused(policy, origin.replace("127.0.0.1", "localhost") + "/image.png").message


def test_fetching_is_off_without_an_allowlist_and_limited_to_it(origin):
    assert "disabled" in refused(MediaPolicy(), f"{origin}/image.png").message
    policy = MediaPolicy(allowed_domains=frozenset({"images.example.org"}))
    assert "not in the server's --allowed-media-domains" in refused(policy, f"{origin}/image.png").message
    assert "scheme" in refused(policy, "ftp://images.example.org/x.png").message
    assert "credentials" in refused(policy, "http://user:pw@images.example.org/x.png").message


def test_allowlisted_fetch_without_redirects_and_with_caps(origin):
    policy = MediaPolicy(
        allowed_domains=frozenset({"127.0.0.1"}), allow_private_addresses=True, max_bytes=20_000, fetch_timeout=1.0
    )
    assert fetch(policy, f"{origin}/image.png") == png_bytes()
    assert "redirects are not followed" in refused(policy, f"{origin}/redirect").message
    assert refused(policy, f"{origin}/big").status == 413
    assert refused(policy, f"{origin}/big-chunked").status == 413
    assert "HTTP 404" in refused(policy, f"{origin}/missing").message
    started = time.monotonic()
    assert "longer than 1 s" in refused(policy, f"{origin}/slow").message
    assert time.monotonic() - started < 2.5


# --- file: -----------------------------------------------------------------------------------------------
def test_file_urls_only_inside_the_allowed_folder(tmp_path: Path):
    allowed = tmp_path / "media"
    allowed.mkdir()
    (allowed / "cat.png").write_bytes(png_bytes())
    (tmp_path / "secret.txt").write_text("secret")
    (allowed / "link.png").symlink_to(tmp_path / "secret.txt")
    policy = MediaPolicy(allowed_local_path=allowed)
    assert fetch(policy, (allowed / "cat.png").as_uri()) == png_bytes()
    assert "outside" in refused(policy, (allowed / "link.png").as_uri()).message  # symlinks resolved first
    assert "outside" in refused(policy, f"file://{allowed}/../secret.txt").message
    assert "outside" in refused(policy, "file:///etc/passwd").message
    assert "refused" in refused(MediaPolicy(), (allowed / "cat.png").as_uri()).message


# --- checks before decoding ----------------------------------------------------------------------------
def test_pixel_limit_reads_only_the_header(parts):
    image, limits = get_modality("image"), MediaPolicy().limits()
    bomb = parts.bomb_png(5000)
    assert len(bomb) < 100_000  # 25 MP in well under 100 KB
    assert "5000x5000" in image.precheck(bomb, limits)
    assert image.precheck(png_bytes(), limits) is None  # small images pass
    assert image.precheck(b"not an image", limits) is None  # left to the modality's decoder
    assert get_modality("depth").precheck(bomb, limits) == image.precheck(bomb, limits)  # image-like maps too


def test_audio_duration_from_the_header():
    audio = get_modality("audio")
    assert audio_seconds(wav_bytes(seconds=1.5)) == pytest.approx(1.5)
    assert audio_seconds(b"not audio at all") is None
    assert "above the server's 1 s limit" in audio.precheck(wav_bytes(seconds=1.5), {"max_audio_seconds": 1.0})
    assert audio.precheck(wav_bytes(seconds=1.5), MediaPolicy().limits()) is None
