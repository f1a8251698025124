"""Turn a media source (a `data:` URL, an http(s) URL, or an uploaded file) into bytes, within a byte limit.

`read_media` is the one door: the intake calls it once per item, with the item's byte limit already
decided (`service.media.limits`); every size comparison is `limits.check_size`.

Contract:
- the result carries the bytes and the media type the client declared (the data URL's MIME type, the
  server's Content-Type), which only decides between 400 (an accepted type that does not decode)
  and 415 (any other type) when the bytes cannot be decoded: the bytes, not the label, are trusted;
- `data:<mime>;base64,<payload>` is decoded locally; its size is checked before decoding.
- `http(s)://` is fetched only when the settings allow URLs. The host is resolved once, every resolved
  address must be public (not private, loopback, link-local, multicast, reserved, unspecified) unless
  private addresses are allowed or the host/address is allow-listed, and the connection then goes to
  that vetted address (the Host header and TLS SNI keep the original name, so certificates are still
  verified against it). Pinning the address closes the DNS-rebinding gap between check and connect.
  Redirects are followed by hand, each hop checked the same way.
- Any other scheme (file:, ftp:, bare paths, ...) is refused: SGLang would happily open a local path.
- an upload (multipart `/v1/generate`, already spooled by the form parser) is refused by its size
  before it is read, and by what was read; an empty one is a 400.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from service.errors import InvalidRequest
from service.media.limits import check_size

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class MediaBytes:
    """The bytes of one media item and the type its sender declared (lower case, no parameters)."""

    data: bytes
    declared_type: str | None = None


class Upload(Protocol):
    """What the intake needs of an uploaded file (Starlette's `UploadFile` has it)."""

    size: int | None
    content_type: str | None

    async def read(self, size: int = -1) -> bytes: ...


def media_type_of(value: str | None) -> str | None:
    """`Image/PNG; charset=x` -> `image/png`; None for empty values."""
    kind = (value or "").split(";", 1)[0].strip().lower()
    return kind or None


@dataclass(frozen=True)
class FetchPolicy:
    """What the fetcher may reach. Built from `GatewaySettings` (see `from_settings`)."""

    allow_urls: bool = True
    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()
    timeout_s: float = 15.0
    max_redirects: int = 3

    @classmethod
    def from_settings(cls, settings) -> FetchPolicy:
        return cls(
            allow_urls=settings.allow_media_urls,
            allow_private=settings.allow_private_media_urls,
            allowed_hosts=tuple(h.lower() for h in settings.media_url_allowed_hosts),
            timeout_s=settings.media_fetch_timeout_s,
            max_redirects=settings.media_fetch_max_redirects,
        )

    def host_allow_listed(self, host: str, address: IPAddress) -> bool:
        """True if `host` (a name) or `address` (resolved) is on the allow-list (names, IPs or CIDRs)."""
        for entry in self.allowed_hosts:
            if entry == host.lower():
                return True
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue  # a host name entry that did not match
        return False

    def address_allowed(self, host: str, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
        if self.host_allow_listed(host, address):
            return True
        if address.is_unspecified or address.is_multicast:
            return False  # never meaningful as a media source
        return self.allow_private or address.is_global


def decode_data_url(url: str, *, max_bytes: int, what: str) -> bytes:
    """Decode a base64 `data:` URL; refuse non-base64 payloads and payloads over `max_bytes`."""
    header, sep, payload = url.partition(",")
    if not sep:
        raise InvalidRequest(f"{what}: malformed data URL (no comma)", code="invalid_media_url")
    if not header.endswith(";base64"):
        raise InvalidRequest(f"{what}: data URLs must be base64-encoded", code="invalid_media_url")
    payload = payload.strip()
    # 4 base64 characters carry 3 bytes (up to 2 of them padding): refuse before allocating the decoded copy.
    check_size(len(payload) // 4 * 3 - 2, max_bytes, what)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{what}: invalid base64 in data URL", code="invalid_media_url") from None
    check_size(len(data), max_bytes, what)
    if not data:
        raise InvalidRequest(f"{what}: empty media", code="invalid_media")
    return data


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise InvalidRequest(f"cannot resolve media host {host!r}", code="media_fetch_failed") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))


async def _vetted_target(url: str, policy: FetchPolicy, what: str) -> tuple[str, str, str]:
    """Check one URL; return (URL to connect to, Host header, SNI name)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest(f"{what}: only data:, http: and https: URLs are accepted", code="invalid_media_url")
    host = parts.hostname
    if not host:
        raise InvalidRequest(f"{what}: URL has no host", code="invalid_media_url")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidRequest(f"{what}: invalid port in URL", code="invalid_media_url") from None
    addresses = await _resolve(host, port)
    refused = [a for a in addresses if not policy.address_allowed(host, a)]
    if not addresses or refused:
        # Refuse if *any* address is internal: a name resolving to both is an attack, not a CDN.
        raise InvalidRequest(
            f"{what}: URL host {host!r} resolves to a non-public address; refused (SSRF guard)",
            code="media_url_not_allowed",
        )
    address = addresses[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = parts.netloc.rpartition("@")[2]  # never forward credentials embedded in the URL
    return pinned, host_header, host


async def fetch_url(
    url: str, *, max_bytes: int, policy: FetchPolicy, client: httpx.AsyncClient, what: str
) -> MediaBytes:
    """GET an http(s) URL under the SSRF policy, following at most `policy.max_redirects` redirects."""
    if not policy.allow_urls:
        raise InvalidRequest(
            f"{what}: media URLs are disabled on this server; send a data: URL", code="media_url_not_allowed"
        )
    current = url
    for _ in range(policy.max_redirects + 1):
        pinned, host_header, sni = await _vetted_target(current, policy, what)
        request = client.build_request(
            "GET", pinned, headers={"Host": host_header}, extensions={"sni_hostname": sni}, timeout=policy.timeout_s
        )
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise InvalidRequest(
                f"{what}: fetching the URL failed ({type(exc).__name__})", code="media_fetch_failed"
            ) from None
        try:
            if response.is_redirect and "location" in response.headers:
                current = urljoin(current, response.headers["location"])
                continue
            if response.status_code != 200:
                raise InvalidRequest(
                    f"{what}: fetching the URL gave HTTP {response.status_code}", code="media_fetch_failed"
                )
            declared = response.headers.get("content-length")
            if declared and declared.isdigit():
                check_size(int(declared), max_bytes, what)
            chunks, size = [], 0
            try:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    check_size(size, max_bytes, what)
                    chunks.append(chunk)
            except httpx.HTTPError as exc:
                raise InvalidRequest(
                    f"{what}: reading the URL failed ({type(exc).__name__})", code="media_fetch_failed"
                ) from None
            data = b"".join(chunks)
            if not data:
                raise InvalidRequest(f"{what}: the URL returned no content", code="invalid_media")
            return MediaBytes(data, media_type_of(response.headers.get("content-type")))
        finally:
            await response.aclose()
    raise InvalidRequest(f"{what}: too many redirects", code="media_fetch_failed")


async def load_media_bytes(
    url: str, *, max_bytes: int, policy: FetchPolicy, client: httpx.AsyncClient, what: str
) -> MediaBytes:
    """Bytes and declared type of a `data:` or http(s) media reference; 4xx `APIError`s for anything refused."""
    if url.startswith("data:"):
        declared = media_type_of(url[5:].partition(",")[0])
        return MediaBytes(decode_data_url(url, max_bytes=max_bytes, what=what), declared)
    return await fetch_url(url, max_bytes=max_bytes, policy=policy, client=client, what=what)


async def read_upload(upload: Upload, max_bytes: int, what: str) -> MediaBytes:
    """The bytes of an upload (already spooled by the form parser), refused over `max_bytes`."""
    if upload.size is not None:
        check_size(upload.size, max_bytes, what)
    data = await upload.read(max_bytes + 1)
    check_size(len(data), max_bytes, what)
    if not data:
        raise InvalidRequest(f"{what}: empty file", code="invalid_media")
    return MediaBytes(data, media_type_of(upload.content_type))


async def read_media(
    source: str | Upload, *, max_bytes: int, policy: FetchPolicy, client: httpx.AsyncClient, what: str
) -> MediaBytes:
    """The bytes of one media item: a `data:` or http(s) URL (a string), or an uploaded file."""
    if isinstance(source, str):
        return await load_media_bytes(source, max_bytes=max_bytes, policy=policy, client=client, what=what)
    return await read_upload(source, max_bytes, what)
