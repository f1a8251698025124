"""Media references: data URLs, and http(s) fetching behind the SSRF guard (a real local HTTP server)."""

import asyncio
import base64
import ipaddress
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from service.errors import InvalidRequest, MediaTooLarge
from service.media.fetch import FetchPolicy, MediaBytes, decode_data_url, load_media_bytes

PAYLOAD = b"x" * 5000


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/ok":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/chunked":  # no Content-Length: the limit is enforced while reading
            self.send_response(200)
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.path.split("?to=", 1)[1])
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def fetch(url, policy, max_bytes=1_000_000):
    async def run():
        async with httpx.AsyncClient(trust_env=False) as client:
            return (await load_media_bytes(url, max_bytes=max_bytes, policy=policy, client=client, what="media")).data

    return asyncio.run(run())


ALLOW_LOCAL = FetchPolicy(allowed_hosts=("127.0.0.1",))


def test_data_url_round_trip():
    url = "data:image/png;base64," + base64.b64encode(b"hello").decode()
    assert fetch(url, FetchPolicy()) == b"hello"


@pytest.mark.parametrize(
    "url,declared",
    [
        ("data:Image/PNG;base64,aGk=", "image/png"),
        ("data:video/mp4;codecs=avc1;base64,aGk=", "video/mp4"),
        ("data:;base64,aGk=", None),
    ],
)
def test_data_url_declared_type(url, declared):
    async def run():
        async with httpx.AsyncClient() as client:
            return await load_media_bytes(url, max_bytes=100, policy=FetchPolicy(), client=client, what="media")

    assert asyncio.run(run()) == MediaBytes(b"hi", declared)


@pytest.mark.parametrize("url", ["data:image/png,rawtext", "data:image/png;base64,@@@@", "data:nocomma"])
def test_bad_data_urls(url):
    with pytest.raises(InvalidRequest):
        decode_data_url(url, max_bytes=100, what="image")


def test_data_url_size_checked_before_decoding():
    url = "data:image/png;base64," + "A" * 4000
    with pytest.raises(MediaTooLarge):
        decode_data_url(url, max_bytes=100, what="image")


def test_allow_listed_loopback_is_fetched(server):
    assert fetch(f"{server}/ok", ALLOW_LOCAL) == PAYLOAD


def test_loopback_refused_by_default(server):
    with pytest.raises(InvalidRequest) as err:
        fetch(f"{server}/ok", FetchPolicy())
    assert err.value.code == "media_url_not_allowed"


def test_private_allowed_when_configured(server):
    assert fetch(f"{server}/ok", FetchPolicy(allow_private=True)) == PAYLOAD


def test_redirect_to_a_refused_host_is_refused(server):
    port = server.rsplit(":", 1)[1]
    # 127.0.0.2 is loopback too but not on the allow-list: the hop is checked like the first URL.
    with pytest.raises(InvalidRequest) as err:
        fetch(f"{server}/redirect?to=http://127.0.0.2:{port}/ok", ALLOW_LOCAL)
    assert err.value.code == "media_url_not_allowed"


def test_redirect_within_allowed_hosts_is_followed(server):
    assert fetch(f"{server}/redirect?to=/ok", ALLOW_LOCAL) == PAYLOAD


@pytest.mark.parametrize("path", ["/ok", "/chunked"])
def test_byte_limit_on_download(server, path):
    with pytest.raises(MediaTooLarge):
        fetch(f"{server}{path}", ALLOW_LOCAL, max_bytes=1000)


def test_http_errors_are_400(server):
    with pytest.raises(InvalidRequest) as err:
        fetch(f"{server}/missing", ALLOW_LOCAL)
    assert err.value.code == "media_fetch_failed"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "/etc/passwd", "http:///nohost"])
def test_other_schemes_refused(url):
    with pytest.raises(InvalidRequest):
        fetch(url, FetchPolicy(allow_private=True))


def test_urls_can_be_disabled(server):
    with pytest.raises(InvalidRequest):
        fetch(f"{server}/ok", FetchPolicy(allow_urls=False, allow_private=True))


@pytest.mark.parametrize(
    "address,public",
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
    ],
)
def test_address_classes(address, public):
    assert FetchPolicy().address_allowed("host", ipaddress.ip_address(address)) is public


def test_allow_list_accepts_names_and_networks():
    policy = FetchPolicy(allowed_hosts=("media.internal", "10.0.0.0/8"))
    assert policy.address_allowed("media.internal", ipaddress.ip_address("192.168.0.5"))
    assert policy.address_allowed("other", ipaddress.ip_address("10.9.9.9"))
    assert not policy.address_allowed("other", ipaddress.ip_address("192.168.0.5"))
