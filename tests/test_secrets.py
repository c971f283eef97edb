"""A token never shows: not in errors, reprs, statuses or logs, wherever it travels."""

from __future__ import annotations

import functools
import logging
import traceback

import pytest
import trio
import trio_websocket

from helpers import idle
from tenantry import (
    Backoff,
    ConnectFailed,
    ReconnectPolicy,
    SocketOptions,
    TenantSpec,
    UrlConnector,
    open_hub,
    open_socket,
)
from tenantry._connect import redact_url

TOKEN = "tnt-SECRET-7f3a9c"  # noqa: S105 - a fake, recognisable wherever it leaks


UNSENDABLE = [
    pytest.param(f"Bearer {TOKEN}\n", "line break", id="read from a file with its newline"),
    pytest.param(f"Bearer {TOKEN}\r\nX-Evil: 1", "line break", id="CR/LF"),
    pytest.param(f"Bearer {TOKEN}\u2603", "latin-1", id="not latin-1"),
    pytest.param(f"Bearer {TOKEN}\x00", "control character", id="NUL"),
    pytest.param(f" Bearer {TOKEN}", "white space", id="leading space"),
    pytest.param(f"Bearer {TOKEN}".encode(), "must be a str", id="bytes"),
]


@pytest.mark.parametrize(("value", "problem"), UNSENDABLE)
def test_a_header_that_cannot_be_sent_is_refused_by_name(value: str, problem: str) -> None:
    headers = {"Authorization": value}
    with pytest.raises(ValueError, match=problem) as refused:
        SocketOptions(headers=headers)
    assert "'Authorization'" in str(refused.value)
    assert TOKEN not in str(refused.value)
    assert TOKEN not in repr(refused.value)


def test_a_header_name_that_cannot_be_sent_is_not_shown_either() -> None:
    with pytest.raises(ValueError, match="header 2 of 2 has a name") as refused:
        TenantSpec(
            "a",
            "ws://h/",
            idle,
            options=SocketOptions(headers={"X-Ok": "1", f"Bearer {TOKEN}": "x"}),
        )
    assert TOKEN not in str(refused.value)


def test_headers_that_can_be_sent_pass() -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Tab": "a\tb", "X-Latin": "caf\xe9", "E": ""}
    spec = TenantSpec("a", "ws://h/", idle, options=SocketOptions(headers=headers))
    assert TOKEN not in repr(spec)


@pytest.mark.parametrize(
    "url",
    [
        f"https://user:{TOKEN}@example.test/?token={TOKEN}",
        f"{TOKEN}",
        f"ws://user:{TOKEN}@[::1/?token={TOKEN}",
        f"ws://{TOKEN}@example.test:port/",
        f"ws:///path?token={TOKEN}",
    ],
)
def test_a_url_that_fails_validation_is_never_echoed(url: str) -> None:
    for make in (UrlConnector, lambda url: TenantSpec("a", url, idle)):
        with pytest.raises(ValueError, match=r"URL|url|connect|host") as refused:
            make(url)
        assert TOKEN not in str(refused.value)
    with pytest.raises(TypeError) as refused_type:
        TenantSpec("a", url.encode(), idle)  # type: ignore[arg-type]
    assert TOKEN not in str(refused_type.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"wss://{TOKEN}@example.test/ws", "wss://***@example.test/ws"),
        (f"wss://user:{TOKEN}@example.test:8443/", "wss://***@example.test:8443/"),
        (f"wss://{TOKEN}:@example.test/", "wss://***@example.test/"),
        (f"wss://example.test/ws?{TOKEN}", "wss://example.test/ws?***"),
        (f"wss://example.test/ws?v=2&{TOKEN}", "wss://example.test/ws?v=***&***"),
        (f"wss://example.test/ws?token={TOKEN}&v=2", "wss://example.test/ws?token=***&v=***"),
        (f"wss://example.test/ws?=={TOKEN}", "wss://example.test/ws?=***"),
        (f"wss://example.test/ws#{TOKEN}", "wss://example.test/ws"),
        ("ws://example.test/ws", "ws://example.test/ws"),
    ],
)
def test_redact_url_redacts_user_info_and_query_values_in_every_form(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert TOKEN not in repr(UrlConnector(url))
    assert TOKEN not in repr(TenantSpec("a", url, idle))


async def test_a_hub_retrying_against_a_hostile_server_shows_the_token_nowhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Real loopback TCP: the token is sent every time, and shown nowhere."""
    caplog.set_level(logging.DEBUG)  # trio-websocket's debug lines too
    caplog.set_level(logging.DEBUG, logger="tenantry")
    requests: list[tuple[str, list[tuple[bytes, bytes]]]] = []
    retried = trio.Event()

    async def reject_or_close(request: trio_websocket.WebSocketRequest) -> None:
        requests.append((request.path, request.headers))
        if len(requests) == 8:  # four attempts per tenant
            retried.set()
        if len(requests) % 2:
            await request.reject(500, body=b"try again")
        # else no answer: the server closes the connection mid-handshake

    async def echo(stream: trio.SocketStream) -> None:
        echoed.append(await stream.receive_some())
        await stream.send_all(echoed[-1])  # the request, token and all, as the "answer"
        await trio.aclose_forcefully(stream)

    echoed: list[bytes] = []
    policy = ReconnectPolicy(backoff=Backoff((0.001,), jitter=0))
    statuses, failures = [], []
    async with trio.open_nursery() as server:
        listener = await server.start(
            trio_websocket.serve_websocket, reject_or_close, "127.0.0.1", 0, None
        )
        port = listener.port
        [echoing] = await server.start(functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
        echo_port = echoing.socket.getsockname()[1]
        urls = [
            f"ws://{TOKEN}@127.0.0.1:{port}/a?{TOKEN}",
            f"ws://user:{TOKEN}@127.0.0.1:{port}/b?token={TOKEN}",
            f"ws://127.0.0.1:{echo_port}/c?token={TOKEN}",
        ]
        headers = {"Authorization": f"Bearer {TOKEN}", "X-Api-Key": TOKEN}
        with trio.fail_after(10):
            async with open_hub(seed=1) as hub:
                for n, url in enumerate(urls):
                    spec = TenantSpec(
                        f"t{n}", url, idle, policy=policy, options=SocketOptions(headers=headers)
                    )
                    await hub.add(spec)
                    statuses.append(repr(spec))
                await retried.wait()
                statuses += [repr(status) for status in hub.status()]
                statuses.append(repr(hub.metrics()))
            for url in urls:
                with pytest.raises(ConnectFailed) as failed:
                    async with open_socket(
                        url, tenant_id="x", options=SocketOptions(headers=headers)
                    ):
                        pytest.fail("connected")  # pragma: no cover
                failures += [str(failed.value), repr(failed.value), repr(failed.value.reason)]
        server.cancel_scope.cancel()
    assert any(TOKEN.encode() in value for _, headers in requests for _, value in headers)
    assert any(TOKEN in path for path, _ in requests)  # the query reached the server
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "handshake rejected with HTTP 500" in messages
    assert "connection closed during handshake" in messages
    assert "invalid handshake response: Bad HTTP message (illegal status line)" in messages
    assert TOKEN.encode() in echoed[0]
    logged = [
        text
        for record in caplog.records
        for text in (
            record.getMessage(),
            repr(record.__dict__),
            "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else "",
        )
    ]
    assert [text for text in logged + statuses + failures if TOKEN in text] == []
