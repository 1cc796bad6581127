"""The awaitable ``dispatch`` returns for a refused frame, shared by both twins.

``dispatch`` runs its checks at the call (so the refusal is counted once, there), but a
caller who awaits it must get the refusal by awaiting, as with a coroutine: in
``asyncio.gather(..., return_exceptions=True)`` or ``ensure_future`` the refusal then
fails that one awaitable instead of escaping from the call that built the batch.
"""

from __future__ import annotations

import collections.abc
import warnings
from typing import NoReturn

from ._errors import DispatchError

__all__ = ("Refused",)


class Refused:
    """An awaitable whose first step raises the refusal it holds.

    Like a coroutine it can be awaited (or run by a task) once; ``close()`` discards
    it. One that is dropped without either warns (``RuntimeWarning``, as a never-awaited
    coroutine does) with the refusal's message: the refusal is counted at the call, but
    nobody would otherwise see why the frame was not enqueued.
    """

    __slots__ = ("_error",)

    def __init__(self, error: DispatchError) -> None:
        self._error: DispatchError | None = error

    def __await__(self) -> Refused:
        return self

    def __iter__(self) -> Refused:
        return self

    def __next__(self) -> NoReturn:
        self.send(None)

    def send(self, value: object) -> NoReturn:
        error, self._error = self._error, None
        if error is None:
            raise RuntimeError("cannot reuse already awaited refused dispatch")
        raise error

    def throw(self, typ: object, val: object = None, tb: object = None) -> NoReturn:
        # The refusal already happened (and was counted): like a finished future, a late
        # cancellation (a task cancelled before its first step) cannot undo it.
        self.send(None)

    def close(self) -> None:
        self._error = None

    def __del__(self) -> None:
        error = self._error
        if error is not None:
            self._error = None
            warnings.warn(
                f"refused dispatch was never awaited: {type(error).__name__}: {error}",
                RuntimeWarning,
                stacklevel=1,
                source=self,
            )

    def __repr__(self) -> str:
        state = "awaited" if self._error is None else repr(self._error)
        return f"<nyxplug dispatch: refused {state}>"


collections.abc.Coroutine.register(Refused)
