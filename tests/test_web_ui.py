"""The demo web app's files at /ui/, served by the Headway server itself (no browser here:
tests/test_browser.py drives the page in Chromium)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from server_harness import ServerThread
from stream.server import ServerConfig


def get(url: str) -> tuple[int, str, bytes]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def test_the_page_is_served_at_ui_as_html():
    with ServerThread() as server:
        status, content_type, body = get(server.http + "/ui/")
    assert status == 200
    assert content_type.startswith("text/html")
    assert b"<canvas" in body


def test_the_page_scripts_are_served_with_a_javascript_type():
    with ServerThread() as server:
        status, content_type, body = get(server.http + "/ui/app.js")
    assert (status, content_type.split(";")[0]) == (200, "text/javascript")
    assert body


def test_ui_without_its_slash_redirects_to_it():
    with ServerThread() as server:
        status, _, _ = get(server.http + "/ui")
    assert status == 301


@pytest.mark.parametrize("path", ["/ui/nothing.js", "/ui/../server.py", "/ui/%2e%2e/server.py", "/ui/.hidden.js",
                                  "/ui/sub/app.js"])
def test_a_file_outside_the_web_app_is_not_found(path):
    with ServerThread() as server:
        status, _, _ = get(server.http + path)
    assert status == 404


def test_info_names_the_endpoints_and_the_models_serving_them():
    with ServerThread() as server:
        status, content_type, body = get(server.http + "/ui/info.json")
    info = json.loads(body)
    assert (status, content_type) == (200, "application/json")
    assert info["endpoints"] == ["/", "/v1/policy"]
    assert info["models"] == [{"name": "standin", "task": None, "endpoints": ["/", "/v1/policy"]}]


def test_a_server_without_a_web_app_answers_404_at_ui():
    with ServerThread(config=ServerConfig(ui_dir="")) as server:
        status, _, _ = get(server.http + "/ui/")
    assert status == 404


async def test_the_page_the_server_serves_may_open_websockets():
    # A browser sends the page's origin, which is the server's own address.
    with ServerThread() as server:
        async with connect(server.url, origin=f"http://127.0.0.1:{server.port}") as ws:
            await ws.recv()


@pytest.mark.parametrize("origin", ["http://127.0.0.1:1", "http://evil.example"])
async def test_a_page_from_elsewhere_may_not(origin):
    with ServerThread() as server:
        with pytest.raises(InvalidStatus) as info:
            async with connect(server.url, origin=origin):
                pass
    assert info.value.response.status_code == 403


def test_the_demo_serves_the_table_policy_once_it_is_trained(tmp_path):
    from clients.demo import serve_arguments

    assert "table" not in serve_arguments(tmp_path)
    (tmp_path / "table_flow.safetensors").write_bytes(b"")
    assert serve_arguments(tmp_path) == ["--model", "whack", "--model", "table", "--model", "standin"]
