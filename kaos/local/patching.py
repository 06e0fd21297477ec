"""Installing and undoing patches to moto internals, loudly.

A patch replaces an attribute moto defines (a method, a module function) or adds one it lacks. Either way the
target is checked when the patch is installed: a replaced attribute that is gone (moto renamed it) or an added
one that moto now defines raises :class:`PatchTargetError` instead of leaving the patch as dead code or shadowing
moto's own. The moto version is checked against the range the patches were written for (:func:`check_moto`).
"""
from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Iterator
from typing import Any, Final

# The moto versions whose internals kaos.local.patches, patches_s3 and iam were written (and tested) against:
# from the first, inclusive, to the second, exclusive.
MOTO_VERSIONS: Final = ((5, 2, 5), (5, 2, 6))
_MISSING: Final = object()


class PatchTargetError(RuntimeError):
    """A patch's target is not what the patch was written for."""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def check_moto(version: str | None = None) -> None:
    """Raises PatchTargetError unless moto's version (installed, or `version`) is in MOTO_VERSIONS."""
    found = version or importlib.metadata.version("moto")
    low, high = MOTO_VERSIONS
    if not low <= _version(found) < high:
        raise PatchTargetError(f"moto {found} is installed; the emulator's patches are written for moto >= "
                               f"{'.'.join(map(str, low))}, < {'.'.join(map(str, high))} (requirements.txt pins it)")


def _describe(owner: Any, name: str) -> str:
    return f"{getattr(owner, '__module__', '')}.{getattr(owner, '__qualname__', getattr(owner, '__name__', owner))}" \
           f".{name}"


class Patches:
    """One set of installed patches, each with moto's original kept for :meth:`remove` and :meth:`stock`."""

    def __init__(self) -> None:
        self._originals: dict[tuple[Any, str], Any] = {}

    def __bool__(self) -> bool:
        return bool(self._originals)

    def replace(self, owner: Any, name: str, value: Any) -> None:
        """Replaces `owner.name`, which must exist (defined on `owner` or inherited)."""
        if (owner, name) not in self._originals and not hasattr(owner, name):
            raise PatchTargetError(f"{_describe(owner, name)} does not exist: moto changed, the patch would be dead")
        self._set(owner, name, value)

    def add(self, owner: Any, name: str, value: Any) -> None:
        """Adds `owner.name`, which moto must not define."""
        if (owner, name) not in self._originals and hasattr(owner, name):
            raise PatchTargetError(f"{_describe(owner, name)} exists now: moto implements what the patch adds")
        self._set(owner, name, value)

    def _set(self, owner: Any, name: str, value: Any) -> None:
        self._originals.setdefault((owner, name), owner.__dict__.get(name, _MISSING))
        setattr(owner, name, value)

    def original(self, owner: Any, name: str) -> Any:
        """moto's own attribute (what `owner.name` was before the patch)."""
        original = self._originals[(owner, name)]
        return getattr(super(owner, owner), name) if original is _MISSING else original  # inherited

    def remove(self) -> None:
        """Restores every original (an added or inherited attribute is deleted from `owner` again)."""
        for (owner, name), original in self._originals.items():
            if original is _MISSING:
                if name in owner.__dict__:
                    delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._originals.clear()

    @contextlib.contextmanager
    def stock(self, owner: Any, name: str) -> Iterator[None]:
        """moto's own behaviour for one patch point while the block runs (the contract tests show each patch is
        what makes them pass)."""
        key = (owner, name)
        patched = owner.__dict__[name]
        original = self._originals[key]
        if original is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, original)
        try:
            yield
        finally:
            setattr(owner, name, patched)
