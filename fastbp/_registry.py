"""One name lookup for the things a user may name: losses, optimizers, schedules, metrics.

Each module keeps a Registry of its entries (a class or a function) under a canonical name
and its aliases; `lookup` takes a name in any case and returns the entry, or raises a
ValueError that lists every valid name. Nothing else in the package compares such names
with strings: it asks the object what it needs to know.
"""
from __future__ import annotations


class Registry:
    """Canonical names and aliases of one kind of object, in the order registered."""

    def __init__(self, what: str, hint: str = ""):
        self.what = what          # "loss", "optimizer", ... for messages
        self.hint = hint          # what else is accepted, for messages
        self._entries = {}        # every name (canonical or alias) -> entry
        self._canonical = {}      # canonical name -> entry

    def register(self, name: str, entry, aliases=()):
        for key in (name, *aliases):
            if key in self._entries:
                raise ValueError(f"the {self.what} name {key!r} is registered twice")
            self._entries[key] = entry
        self._canonical[name] = entry
        return entry

    @property
    def canonical_names(self) -> tuple:
        return tuple(self._canonical)

    @property
    def names(self) -> tuple:
        """Every accepted name: the canonical ones first, then the aliases."""
        return self.canonical_names + tuple(key for key in self._entries
                                            if key not in self._canonical)

    def canonical(self, name: str) -> str:
        """The canonical name for a name or alias (any case)."""
        entry = self.lookup(name)
        return next(key for key, value in self._canonical.items() if value is entry)

    def lookup(self, name):
        """The entry registered under `name` (case-insensitive)."""
        if not isinstance(name, str):
            raise TypeError(f"{self.what} must be a name{self.hint}; got {type(name).__name__}")
        key = name.lower()
        if key not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; valid names: "
                             f"{', '.join(self.names)}{self.hint}")
        return self._entries[key]

    def __contains__(self, entry) -> bool:
        return any(value is entry for value in self._canonical.values())
