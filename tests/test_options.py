"""SocketOptions: one checked set of per-connection options, for open_socket and TenantSpec."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tenantry import (
    DEFAULT_EVENT_RULES,
    BufferConfig,
    JsonProtocol,
    ReconnectPolicy,
    Socket,
    SocketOptions,
    TenantSpec,
    open_socket,
)

TOKEN = "s3cr3t-t0ken"  # noqa: S105 - a made-up secret the repr must never show


async def idle(sock: Socket) -> None:
    await trio.sleep_forever()


def test_the_defaults() -> None:
    options = SocketOptions()
    assert options.protocol is None
    assert options.buffer == BufferConfig()
    assert options.rules is DEFAULT_EVENT_RULES
    assert options.headers is None
    assert (options.keepalive, options.grace, options.connect_timeout) == (30, 5, 10)
    assert (options.max_message_size, options.max_pending_sends) == (1024 * 1024, 16)
    assert (options.max_bad_frames, options.bad_frame_window) == (20, 60)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("protocol", object(), TypeError),
        ("protocol", JsonProtocol, TypeError),  # the class, not an instance
        ("buffer", {"flush_interval": 1.0}, TypeError),
        ("rules", "nope", TypeError),
        ("keepalive", 0, ValueError),
        ("keepalive", "30", TypeError),
        ("headers", ["Authorization"], TypeError),
        ("headers", {"Authorization": f"Bearer {TOKEN}\n"}, ValueError),
        ("max_message_size", 0, ValueError),
        ("grace", -1.0, ValueError),
        ("max_bad_frames", -1, ValueError),
        ("max_bad_frames", 1.5, TypeError),
        ("bad_frame_window", float("nan"), ValueError),
        ("max_pending_sends", 0, ValueError),
        ("connect_timeout", True, TypeError),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_a_field_that_could_never_work_is_refused_by_name(
    field: str, value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match=f"^{field}") as refused:
        SocketOptions(**{field: value})
    assert TOKEN not in str(refused.value)


def test_zero_bad_frames_is_allowed() -> None:
    assert SocketOptions(max_bad_frames=0).max_bad_frames == 0


def test_fields_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        SocketOptions(None)  # type: ignore[call-arg]


def test_the_repr_shows_header_names_never_values() -> None:
    options = SocketOptions(headers={"Authorization": f"Bearer {TOKEN}"}, keepalive=12)
    shown = repr(options)
    assert TOKEN not in shown
    assert "'Authorization': '***'" in shown
    assert "keepalive=12" in shown
    assert TOKEN not in repr(TenantSpec("a", "ws://h/", idle, options=options))


def test_a_tenant_spec_takes_only_its_own_fields_by_position() -> None:
    spec = TenantSpec("a", "ws://h/", idle, options=SocketOptions(keepalive=12))
    assert spec.options.keepalive == 12
    assert TenantSpec("a", "ws://h/", idle).options == SocketOptions()
    with pytest.raises(TypeError):
        TenantSpec("a", "ws://h/", idle, ReconnectPolicy())  # type: ignore[call-arg]


async def test_open_socket_refuses_options_that_are_not_socket_options() -> None:
    with pytest.raises(TypeError, match=r"^options must be a SocketOptions, got dict"):
        async with open_socket("ws://h/", tenant_id="a", options={"keepalive": 1}):  # type: ignore[arg-type]
            pytest.fail("connected")  # pragma: no cover
