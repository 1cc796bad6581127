"""SPEC 5: the error hierarchy, pickling, and messages that say where."""

from __future__ import annotations

import pickle
import re

import pytest

import nyxplug
from nyxplug import (
    AlreadyLoaded,
    AlreadyRegistered,
    DispatchError,
    FrameError,
    FrameTooLarge,
    FrameType,
    HeaderDecodeError,
    NotRegistered,
    NyxplugError,
    Permission,
    PermissionDenied,
    PluginClosed,
    PluginInfo,
    PluginNotLoaded,
    PluginNotRegistered,
    SandboxViolation,
    UnknownFrameType,
    WouldBlock,
    WrongThread,
)
from nyxplug._errors import AccessListError, TlsSetupError

DISPATCH_ERRORS = [WouldBlock, PluginClosed, PluginNotRegistered, PluginNotLoaded,
                   PermissionDenied, SandboxViolation]  # fmt: skip
FRAME_ERRORS = [HeaderDecodeError, FrameTooLarge, UnknownFrameType]
LIFECYCLE_ERRORS = [AlreadyLoaded, AlreadyRegistered, NotRegistered, WrongThread]

#: The registry entries errors name: declared in a manifest, or built in code.
MANIFEST_INFO = PluginInfo(7, "seven", source="plugins/seven/nyxplug.toml")
CODE_INFO = PluginInfo(7, "seven", Permission.CONTROL)

#: One instance of every error, built the ways the dispatcher builds them.
INSTANCES = {
    "would_block": WouldBlock(7, FrameType.DATA, 100),
    "would_block_manifest": WouldBlock(7, FrameType.DATA, 100, MANIFEST_INFO),
    "would_block_code": WouldBlock(7, FrameType.DATA, 100, CODE_INFO),
    "closed": PluginClosed(7, FrameType.CONTROL),
    "closed_named": PluginClosed(7, FrameType.CONTROL, MANIFEST_INFO),
    "not_registered": PluginNotRegistered(7, FrameType.DATA),
    "not_loaded_frame": PluginNotLoaded(7, FrameType.HANDSHAKE),
    "not_loaded_unload": PluginNotLoaded(7),
    "not_loaded_manifest": PluginNotLoaded(7, FrameType.DATA, MANIFEST_INFO),
    "not_loaded_code": PluginNotLoaded(7, None, CODE_INFO),
    "denied": PermissionDenied(7, FrameType.ERROR, Permission.ERROR_REPORTING),
    "denied_two": PermissionDenied(7, 0x5A, Permission.CONTROL | Permission.DATA_ACCESS),
    "denied_named": PermissionDenied(
        7, FrameType.DATA, Permission.DATA_ACCESS, PluginInfo(7, "seven", Permission.CONTROL)
    ),
    "denied_manifest": PermissionDenied(
        7,
        FrameType.DATA,
        Permission.DATA_ACCESS,
        PluginInfo(7, "seven", source="plugins/seven/nyxplug.toml"),
    ),  # fmt: skip
    "denied_peer": PermissionDenied(
        7, FrameType.CONTROL, Permission.CONTROL, PluginInfo(7, "seven"), "ingest-1"
    ),
    "denied_peer_unnamed": PermissionDenied(8, FrameType.DATA, Permission.DATA_ACCESS, None, "x"),
    "acl": AccessListError("acl.toml", "peers[0].rate", "Expected `float` > 0, got `0`"),
    "acl_whole": AccessListError("acl.toml", "$", "Invalid TOML: oops"),
    "tls_setup": TlsSetupError("client CA certificate", "ca.pem", "`No such file or directory`"),
    "sandbox": SandboxViolation(7, FrameType.CONTROL, "connect to evil.example:443"),
    "sandbox_nowhere": SandboxViolation(None, None, "open /etc/shadow for writing"),
    "sandbox_manifest": SandboxViolation(
        7, FrameType.CONTROL, "connect to evil.example:443", MANIFEST_INFO
    ),
    "sandbox_code": SandboxViolation(7, None, "open /etc/shadow for writing", CODE_INFO),
    "header": HeaderDecodeError("key `id`", "a map without it", 0, FrameType.DATA),
    "header_plain": HeaderDecodeError("a CBOR item", "empty input"),
    "too_large": FrameTooLarge("header", 5000, 4096, FrameType.DATA),
    "too_large_payload": FrameTooLarge("payload", 9, 8),
    "unknown_type": UnknownFrameType(0x10, 7),
    "unknown_type_nowhere": UnknownFrameType(0x10),
    "unknown_register": UnknownFrameType(0x60, None, True),
    "already_loaded": AlreadyLoaded(7),
    "already_loaded_unloading": AlreadyLoaded(7, True),
    "already_registered": AlreadyRegistered(7, "seven"),
    "not_registered_lifecycle": NotRegistered(7),
    "wrong_thread": WrongThread("dispatch_nowait", 11, "MainThread", 22, "reader"),
    "wrong_thread_dispatch": WrongThread("dispatch", 11, "MainThread", 22, "reader"),
}


def test_hierarchy() -> None:
    for cls in DISPATCH_ERRORS + FRAME_ERRORS + LIFECYCLE_ERRORS + [DispatchError, FrameError]:
        assert issubclass(cls, NyxplugError)
        assert getattr(nyxplug, cls.__name__) is cls
    for cls in DISPATCH_ERRORS + FRAME_ERRORS:
        assert issubclass(cls, DispatchError)
    for cls in FRAME_ERRORS:
        assert issubclass(cls, FrameError)
        assert issubclass(cls, ValueError)
    assert issubclass(FrameError, ValueError)
    for cls in DISPATCH_ERRORS:
        assert not issubclass(cls, FrameError)
    for cls in LIFECYCLE_ERRORS:
        assert not issubclass(cls, DispatchError)
    assert issubclass(NyxplugError, Exception)
    assert issubclass(WrongThread, RuntimeError)


def test_dispatch_errors_carry_plugin_and_frame_type() -> None:
    for name, exc in INSTANCES.items():
        if isinstance(exc, DispatchError):
            assert hasattr(exc, "plugin_id") and hasattr(exc, "frame_type"), name
    assert (INSTANCES["would_block"].plugin_id, INSTANCES["would_block"].frame_type) == (7, 0x52)
    assert INSTANCES["header_plain"].plugin_id is None
    assert INSTANCES["too_large"].plugin_id is None
    assert INSTANCES["not_loaded_unload"].frame_type is None


@pytest.mark.parametrize("name", list(INSTANCES))
def test_every_error_pickles(name: str) -> None:
    exc = INSTANCES[name]
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        clone = pickle.loads(pickle.dumps(exc, protocol))
        assert type(clone) is type(exc)
        assert str(clone) == str(exc)
        assert clone.args == exc.args
        assert vars(clone) == vars(exc)


@pytest.mark.parametrize("name", list(INSTANCES))
def test_messages_say_where(name: str) -> None:
    exc = INSTANCES[name]
    text = str(exc)
    assert text and "\n" not in text
    plugin_id = getattr(exc, "plugin_id", None)
    frame_type = getattr(exc, "frame_type", None)
    if plugin_id is not None:
        named = rf"\bplugin {plugin_id}\b|\bplugin '[^']+' \(id {plugin_id}\)"
        assert re.search(named, text, re.IGNORECASE), text
    if frame_type is not None:
        assert f"0x{frame_type:02x}" in text, text
        if frame_type in FrameType._value2member_map_:
            assert f"0x{frame_type:02x} ({FrameType(frame_type).name})" in text, text


def test_messages_exactly() -> None:
    expected = {
        "would_block": "Queue of plugin 7 is full (capacity 100) - frame 0x52 (DATA) was not "
        "enqueued; await dispatch() to wait for space, or retry later",
        "would_block_manifest": "Queue of plugin 'seven' (id 7) is full (capacity 100) - frame "
        "0x52 (DATA) was not enqueued; await dispatch() to wait for space, retry later, or "
        "raise [resources] capacity of plugins/seven/nyxplug.toml",
        "would_block_code": "Queue of plugin 'seven' (id 7) is full (capacity 100) - frame 0x52 "
        "(DATA) was not enqueued; await dispatch() to wait for space, retry later, or raise "
        "load_plugin(capacity=...) for 'seven'",
        "closed_named": "Plugin 'seven' (id 7) was unloaded while frame 0x53 (CONTROL) waited "
        "for queue space - the frame was not enqueued",
        "not_loaded_manifest": "Plugin 'seven' (id 7) is not loaded - frame 0x52 (DATA) was "
        "refused; load it with PluginManager.load('seven') first (`nyxplug enable seven` on a "
        "running host)",
        "not_loaded_code": "Plugin 'seven' (id 7) is not loaded - load it with "
        "Dispatcher.load_plugin() first",
        "sandbox_manifest": "Sandbox refused connect to evil.example:443 - frame 0x53 (CONTROL) "
        "for plugin 'seven' (id 7); allow it in [sandbox] of plugins/seven/nyxplug.toml",
        "sandbox_code": "Sandbox refused open /etc/shadow for writing - plugin 'seven' (id 7); "
        "allow it in the SandboxPolicy given to load_plugin() for 'seven'",
        "closed": "Plugin 7 was unloaded while frame 0x53 (CONTROL) waited for queue space - "
        "the frame was not enqueued",
        "not_loaded_unload": "Plugin 7 is not loaded - load it with Dispatcher.load_plugin() first",
        "denied": "Plugin 7 lacks permission ERROR_REPORTING required by frame 0x54 (ERROR) - "
        "grant it in the plugin's PluginInfo.permissions",
        "denied_two": "Plugin 7 lacks permission DATA_ACCESS|CONTROL required by frame 0x5a - "
        "grant it in the plugin's PluginInfo.permissions",
        "denied_named": "Plugin 'seven' (id 7) lacks permission DATA_ACCESS required by frame "
        "0x52 (DATA) - grant it in PluginInfo.permissions of 'seven'",
        "denied_manifest": "Plugin 'seven' (id 7) lacks permission DATA_ACCESS required by "
        "frame 0x52 (DATA) - grant it in [permissions] of plugins/seven/nyxplug.toml",
        "denied_peer": "Peer 'ingest-1' may not send frame 0x53 (CONTROL) to plugin 'seven' "
        "(id 7): its access lacks CONTROL - grant it in the peer's entry of the listener's "
        "access list (nyxplug serve --acl)",
        "denied_peer_unnamed": "Peer 'x' may not send frame 0x52 (DATA) to plugin 8: its "
        "access lacks DATA_ACCESS - grant it in the peer's entry of the listener's access "
        "list (nyxplug serve --acl)",
        "acl": "Invalid access list acl.toml: Expected `float` > 0, got `0` - at `peers[0].rate`",
        "acl_whole": "Invalid access list acl.toml: Invalid TOML: oops",
        "tls_setup": "Expected a PEM client CA certificate file, got `No such file or "
        "directory` - in ca.pem; check the path and that the file holds what its option names",
        "sandbox": "Sandbox refused connect to evil.example:443 - frame 0x53 (CONTROL) for "
        "plugin 7; allow it in the plugin's SandboxPolicy",
        "sandbox_nowhere": "Sandbox refused open /etc/shadow for writing; allow it in the "
        "plugin's SandboxPolicy",
        "header": "Expected key `id`, got a map without it at byte 0 - in plugin header of "
        "frame 0x52 (DATA)",
        "header_plain": "Expected a CBOR item, got empty input - in plugin header",
        "too_large_payload": "Expected a payload of at most 8 bytes, got 9 bytes - in payload; "
        "raise max_payload_size or send less",
        "unknown_type_nowhere": "Expected a frame type this dispatcher routes, got 0x10; the "
        "built-in types are 0x51..0x54, register_frame_type() adds others in 0x50..0x5f",
        "already_registered": "Plugin 7 is already registered (as 'seven') - unregister it "
        "first or use another id",
        "not_registered_lifecycle": "Plugin 7 is not registered - register it first",
        "wrong_thread": "Dispatcher.dispatch_nowait() was called from thread 'reader' (id 22), "
        "but this dispatcher belongs to thread 'MainThread' (id 11), which runs its event "
        "loop; it is not thread-safe - from another thread use "
        "loop.call_soon_threadsafe(dispatcher.dispatch_nowait, ...)",
        "wrong_thread_dispatch": "Dispatcher.dispatch() was called from thread 'reader' (id 22), "
        "but this dispatcher belongs to thread 'MainThread' (id 11), which runs its event "
        "loop; it is not thread-safe - from another thread use "
        "asyncio.run_coroutine_threadsafe(<a coroutine that awaits dispatcher.dispatch(...)>, "
        "loop)",
    }
    for name, text in expected.items():
        assert str(INSTANCES[name]) == text, name


def test_not_registered_is_also_a_lookup_error() -> None:
    # PluginRegistry.unregister of an unknown id: usable where a LookupError is caught
    assert issubclass(NotRegistered, LookupError)
