"""Getting the bytes of a media input, safely: data: URLs, allowlisted http(s) URLs, and file: URLs under one folder.

Policy (all enforced before anything is decoded):

- ``data:`` URLs (base64) are always accepted, up to ``max_bytes`` decoded bytes.
- ``http(s)://`` is off unless hosts are allowlisted (exact host names). An allowlisted host must resolve only to
  public addresses (no loopback, private, link-local such as 169.254.169.254, reserved or multicast ranges); the
  connection goes to the address that was checked (no second DNS lookup, so no DNS rebinding), redirects are never
  followed, and the download is capped in bytes and seconds.
- ``file:`` only under ``allowed_local_path`` (symlinks resolved first).
- Images: the pixel count is read from the header and checked before decoding (decompression bombs).
- Audio: the duration is read from the container header when it has one and checked before decoding.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from onellm.serving.errors import APIError, bad_request

MiB = 1024 * 1024


@dataclass(frozen=True)
class MediaPolicy:
    """What the server accepts. The defaults are the CLI's."""

    max_bytes: int = 20 * MiB  # one input, after base64 decoding or download
    max_image_pixels: int = 16_000_000  # 16 MP: a 4000x4000 photo; a decoded RGB image of this size is 48 MB
    max_audio_seconds: float = 120.0
    fetch_timeout: float = 10.0  # seconds for one http(s) download, connection included
    allowed_domains: frozenset[str] = field(default_factory=frozenset)  # empty: http(s) fetching is off
    allowed_local_path: Path | None = None  # None: file: URLs are refused
    allow_private_addresses: bool = False  # for servers that fetch from an internal network on purpose

    def limits(self) -> dict[str, float]:
        """The limits a modality's cheap pre-check reads (:meth:`onellm.modalities.base.Modality.precheck`)."""
        return {"max_image_pixels": self.max_image_pixels, "max_audio_seconds": self.max_audio_seconds}


def is_public_address(address: str) -> bool:
    """True for a globally routable unicast address (IPv4-mapped IPv6 judged by its IPv4 part)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def decode_base64(data: str, param: str, max_bytes: int) -> bytes:
    """Strict base64 (RFC 4648, padding required) -> bytes; 413 above ``max_bytes``, 400 when malformed."""
    if len(data) * 3 // 4 > max_bytes:
        raise APIError(
            413, f"{param}: about {len(data) * 3 // 4} bytes decoded, above the {max_bytes}-byte limit", param
        )
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"{param}: malformed base64 ({exc})", param) from None
    if not raw:
        raise bad_request(f"{param}: the base64 data is empty", param)
    return raw


def decode_data_url(url: str, param: str, max_bytes: int) -> bytes:
    """``data:[<mime>];base64,<payload>`` -> bytes."""
    header, sep, payload = url.partition(",")
    if not sep:
        raise bad_request(f"{param}: malformed data: URL (no ',' between header and payload)", param)
    if not header.endswith(";base64"):
        raise bad_request(f"{param}: data: URLs must be base64-encoded ('data:<mime>;base64,<payload>')", param)
    return decode_base64(payload, param, max_bytes)


class MediaFetcher:
    """Resolves a media URL to bytes under a :class:`MediaPolicy`. Errors are :class:`APIError` naming ``param``."""

    def __init__(self, policy: MediaPolicy):
        self.policy = policy

    async def fetch(self, url: str, param: str) -> bytes:
        if not isinstance(url, str) or not url:
            raise bad_request(f"{param}: expected a URL string", param)
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            return decode_data_url(url, param, self.policy.max_bytes)
        if scheme in ("http", "https"):
            return await self._fetch_http(url, param)
        if scheme == "file":
            return self._read_file(url, param)
        raise bad_request(
            f"{param}: unsupported URL scheme {scheme or url[:16]!r}; use data:, http(s): or file:", param
        )

    # --- file: ---------------------------------------------------------------------------------
    def _read_file(self, url: str, param: str) -> bytes:
        root = self.policy.allowed_local_path
        if root is None:
            raise bad_request(f"{param}: file: URLs are refused (the server has no --allowed-local-media-path)", param)
        try:
            parsed = urllib.parse.urlparse(url)
            path = Path(urllib.parse.unquote(parsed.path))
            if "\x00" in str(path):
                raise ValueError("a NUL byte in the path")
        except ValueError as exc:  # 'file://[x', '%00'
            raise bad_request(f"{param}: malformed file: URL ({exc})", param) from None
        if parsed.netloc not in ("", "localhost"):
            raise bad_request(f"{param}: file: URLs must name a local path (file:///...)", param)
        path = path.resolve()
        if not path.is_relative_to(root.resolve()):
            raise bad_request(f"{param}: {path} is outside the allowed media folder", param)
        if not path.is_file():
            raise bad_request(f"{param}: {path} is not a file", param)
        if path.stat().st_size > self.policy.max_bytes:
            raise APIError(
                413, f"{param}: {path.stat().st_size} bytes, above the {self.policy.max_bytes}-byte limit", param
            )
        return path.read_bytes()

    # --- http(s): ------------------------------------------------------------------------------
    async def _resolve_public(self, host: str, port: int, param: str) -> str:
        """One checked address for ``host``: every address it resolves to must be public."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise bad_request(f"{param}: cannot resolve host {host!r} ({exc.strerror or exc})", param) from None
        addresses = [info[4][0] for info in infos]
        if not self.policy.allow_private_addresses:
            private = [a for a in addresses if not is_public_address(a)]
            if private:
                raise bad_request(
                    f"{param}: host {host!r} resolves to a non-public address ({private[0]}); refused", param
                )
        return addresses[0]

    async def _fetch_http(self, url: str, param: str) -> bytes:
        policy = self.policy
        if not policy.allowed_domains:
            raise bad_request(
                f"{param}: fetching media over http(s) is disabled on this server; send the media inline as a "
                f"data: URL (or start the server with --allowed-media-domains)",
                param,
            )
        try:
            parsed = urllib.parse.urlsplit(url)
            host, explicit_port = (parsed.hostname or "").lower(), parsed.port
        except ValueError as exc:  # 'http://[::1', 'http://host:99999'
            raise bad_request(f"{param}: malformed URL ({exc})", param) from None
        if host not in policy.allowed_domains:
            raise bad_request(f"{param}: host {host!r} is not in the server's --allowed-media-domains", param)
        if parsed.username or parsed.password:
            raise bad_request(f"{param}: URLs with credentials are refused", param)
        port = explicit_port or (443 if parsed.scheme == "https" else 80)
        address = await self._resolve_public(host, port, param)
        # Connect to the checked address; the Host header and TLS SNI keep the name (no second lookup).
        netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        pinned = urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path or "/", parsed.query, ""))
        host_header = host if explicit_port is None else f"{host}:{explicit_port}"
        try:
            async with asyncio.timeout(policy.fetch_timeout):
                async with httpx.AsyncClient(
                    follow_redirects=False, timeout=policy.fetch_timeout, trust_env=False
                ) as client:
                    async with client.stream(
                        "GET", pinned, headers={"Host": host_header}, extensions={"sni_hostname": host}
                    ) as response:
                        if response.is_redirect:
                            raise bad_request(
                                f"{param}: {url} answered with a redirect (HTTP {response.status_code}); "
                                f"redirects are not followed, send the final URL",
                                param,
                            )
                        if response.status_code != 200:
                            raise bad_request(f"{param}: fetching {url} returned HTTP {response.status_code}", param)
                        declared = int(response.headers.get("content-length") or 0)
                        if declared > policy.max_bytes:
                            raise APIError(
                                413,
                                f"{param}: {url} is {declared} bytes, above the {policy.max_bytes}-byte limit",
                                param,
                            )
                        chunks, size = [], 0
                        async for chunk in response.aiter_bytes():
                            size += len(chunk)
                            if size > policy.max_bytes:
                                raise APIError(413, f"{param}: {url} exceeds the {policy.max_bytes}-byte limit", param)
                            chunks.append(chunk)
        except TimeoutError:
            raise bad_request(f"{param}: fetching {url} took longer than {policy.fetch_timeout:g} s", param) from None
        except httpx.HTTPError as exc:
            raise bad_request(f"{param}: fetching {url} failed ({type(exc).__name__}: {exc})", param) from None
        data = b"".join(chunks)
        if not data:
            raise bad_request(f"{param}: {url} returned no data", param)
        return data


# --- checks before decoding -------------------------------------------------------------------------
