"""``PluginInfo``: a plugin's identity and rights, shared by both dispatcher twins."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._constants import MAX_PLUGIN_ID, Permission

__all__ = ("PluginInfo", "permission_mask")

_NO_PERMISSIONS = Permission(0)


def permission_mask(permissions: Permission | Iterable[Permission]) -> int:
    """Fold a ``Permission`` value or an iterable of them into an int bitmask."""
    if isinstance(permissions, Permission):
        return permissions.value
    if isinstance(permissions, (str, bytes)) or not isinstance(permissions, Iterable):
        raise TypeError(
            f"Expected a Permission or an iterable of Permission, got {type(permissions).__name__}"
        )
    mask = 0
    for item in permissions:
        if not isinstance(item, Permission):
            raise TypeError(
                f"Expected Permission members in permissions, got {item!r} ({type(item).__name__})"
            )
        mask |= item.value
    return mask


class PluginInfo:
    """Who a plugin is (``id``, ``name``) and which frame permissions it holds.

    ``source`` is the manifest the plugin was declared in (``None`` for a ``PluginInfo``
    built in code): errors name it, so their fix is in the terms the plugin was loaded
    with (``[permissions]`` of that file rather than ``PluginInfo.permissions``).

    Immutable: give the registry a new ``PluginInfo`` (or call
    ``PluginRegistry.set_permissions``, which makes the rights the code's unless given
    the manifest that grants them as ``source``) to change a plugin's rights.
    """

    __slots__ = ("_id", "_name", "_permissions", "_source")

    def __init__(
        self,
        id: int,
        name: str,
        permissions: Permission | Iterable[Permission] = _NO_PERMISSIONS,
        *,
        source: str | None = None,
    ) -> None:
        if isinstance(id, bool) or not isinstance(id, int):
            raise TypeError(f"Expected `id` to be an int, got {type(id).__name__}")
        if not 0 <= id <= MAX_PLUGIN_ID:
            raise ValueError(f"Expected `id` in 0..{MAX_PLUGIN_ID}, got {id!r}")
        if not isinstance(name, str):
            raise TypeError(f"Expected `name` to be a str, got {type(name).__name__}")
        self._id = int(id)
        self._name = name
        self._permissions = Permission(permission_mask(permissions))
        if source is not None and not isinstance(source, str):
            raise TypeError(f"Expected `source` to be a str or None, got {type(source).__name__}")
        self._source = source

    @property
    def id(self) -> int:
        """The unsigned 32-bit plugin id that frame headers name."""
        return self._id

    @property
    def name(self) -> str:
        """A human-readable name, used in logs and listings."""
        return self._name

    @property
    def permissions(self) -> Permission:
        """The frame permissions granted to the plugin."""
        return self._permissions

    @property
    def source(self) -> str | None:
        """The manifest that declared the plugin, or ``None`` when code built this info."""
        return self._source

    def has_permission(self, permission: Permission) -> bool:
        """True when every bit of ``permission`` is granted."""
        return (self._permissions & permission) == permission

    def __repr__(self) -> str:
        source = "" if self._source is None else f", source={self._source!r}"
        return (
            f"PluginInfo(id={self._id}, name={self._name!r}, "
            f"permissions={self._permissions!r}{source})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PluginInfo):
            return NotImplemented
        return (self._id, self._name, self._permissions, self._source) == (
            other._id,
            other._name,
            other._permissions,
            other._source,
        )

    def __hash__(self) -> int:
        return hash((self._id, self._name, self._permissions, self._source))

    def __reduce__(self) -> tuple[Any, ...]:
        if self._source is None:
            return (PluginInfo, (self._id, self._name, self._permissions))
        return (_with_source, (self._id, self._name, self._permissions, self._source))


def _with_source(id: int, name: str, permissions: Permission, source: str) -> PluginInfo:
    """Unpickle a ``PluginInfo`` with a ``source`` (``__reduce__`` passes no keywords)."""
    return PluginInfo(id, name, permissions, source=source)
