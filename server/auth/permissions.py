"""Channel patterns and the subscribe/publish decisions made with them.

A pattern is an exact channel name (`news`) or a prefix ending in `*` (`room:*`, and `*` alone for
every channel). Patterns come from the token's `subs` and `pubs` claims and from
`--public-channels`. They are compiled once into a `ChannelPatterns` (a frozenset of exact names
and a tuple of prefixes for one `str.startswith` call), and compiled sets are shared: 200k
connections whose tokens carry the same claims hold one object between them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

from wsd.server.channel_names import ALLOWED_CHARACTERS_DESCRIPTION, MAX_CHANNEL_NAME_LENGTH

if TYPE_CHECKING:
    from wsd.server.auth.tokens import Identity

# The characters of a channel name (wsd.server.channel_names), before an optional final `*`.
_VALID_PATTERN = re.compile(rf"[A-Za-z0-9_:.@-]{{0,{MAX_CHANNEL_NAME_LENGTH}}}\*?")

# Distinct claim shapes whose compiled form is kept. Tokens are issued by the app's backend, so
# their shapes repeat (`user:42` differs per user, `room:*` does not); the bound keeps a backend
# that puts something unique in every token from growing a worker's memory without end.
_COMPILED_CACHE_SIZE = 65536


class PatternError(ValueError):
    """A channel pattern is invalid; the message says which one and why."""


def pattern_error(pattern: object) -> str | None:
    """None if `pattern` is a valid channel pattern, else what is wrong with it."""
    if not isinstance(pattern, str):
        return f"a channel pattern must be a string, got {type(pattern).__name__}"
    if pattern == "":
        return "a channel pattern must not be empty (use * for every channel)"
    if _VALID_PATTERN.fullmatch(pattern) is not None and len(pattern.rstrip("*")) <= MAX_CHANNEL_NAME_LENGTH:
        return None
    shown = repr(pattern) if len(pattern) <= 40 else f"{pattern[:40]!r}..."
    star = pattern.find("*")
    if star != -1 and star != len(pattern) - 1:
        return f"channel pattern {shown}: * may only end a pattern (a prefix such as room:*)"
    if len(pattern.rstrip("*")) > MAX_CHANNEL_NAME_LENGTH:
        return f"channel pattern {shown} is longer than a channel name ({MAX_CHANNEL_NAME_LENGTH} characters)"
    return f"channel pattern {shown}: a channel name ({ALLOWED_CHARACTERS_DESCRIPTION}), or such a prefix followed by *"


class ChannelPatterns:
    """A compiled, immutable set of patterns; `matches(channel)` is a set lookup and one startswith."""

    __slots__ = ("patterns", "_exact", "_prefixes", "_everything")

    def __init__(self, patterns: tuple[str, ...]):
        for pattern in patterns:
            problem = pattern_error(pattern)
            if problem is not None:
                raise PatternError(problem)
        self.patterns = patterns
        self._exact = frozenset(p for p in patterns if not p.endswith("*"))
        prefixes = {p[:-1] for p in patterns if p.endswith("*")}
        self._everything = "" in prefixes
        # A prefix covered by a shorter one adds nothing: drop it so the tuple stays short. Sorted,
        # a covering prefix comes right before the names it covers, so comparing with the last kept
        # one is enough.
        kept: list[str] = []
        for prefix in sorted(prefixes):
            if not kept or not prefix.startswith(kept[-1]):
                kept.append(prefix)
        self._prefixes = tuple(kept)

    def matches(self, channel: str) -> bool:
        return (
            self._everything or channel in self._exact or (bool(self._prefixes) and channel.startswith(self._prefixes))
        )

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __repr__(self) -> str:
        return f"ChannelPatterns({list(self.patterns)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChannelPatterns) and set(self.patterns) == set(other.patterns)

    def __hash__(self) -> int:
        return hash(frozenset(self.patterns))


NO_CHANNELS = ChannelPatterns(())


@lru_cache(maxsize=_COMPILED_CACHE_SIZE)
def _compile_cached(patterns: tuple[str, ...]) -> ChannelPatterns:
    return ChannelPatterns(patterns)


def compile_patterns(patterns: Iterable[str]) -> ChannelPatterns:
    """Compile (and share) a set of patterns; raises PatternError for an invalid one."""
    key = tuple(patterns)
    if not key:
        return NO_CHANNELS
    for pattern in key:
        if not isinstance(pattern, str):  # an unhashable value would break the cache's lookup
            raise PatternError(pattern_error(pattern))
    return _compile_cached(key)


def parse_pattern_list(text: str) -> tuple[str, ...]:
    """`--public-channels news,room:*` → ("news", "room:*"); spaces around items are ignored."""
    items = tuple(item.strip() for item in text.split(","))
    if items == ("",):
        return ()
    for item in items:
        problem = pattern_error(item)
        if problem is not None:
            raise PatternError(f"{problem} (in the list {text!r})")
    return items


class AccessPolicy:
    """The decisions with auth on: subscribe when the channel matches the token's `subs` or a public
    pattern; publish only when it matches the token's `pubs`. (With auth off there is no policy:
    anyone may do anything, as before issue 10.)"""

    __slots__ = ("public",)

    def __init__(self, public: ChannelPatterns = NO_CHANNELS):
        self.public = public

    def may_subscribe(self, identity: Identity, channel: str) -> bool:
        return identity.subs.matches(channel) or self.public.matches(channel)

    def may_publish(self, identity: Identity, channel: str) -> bool:
        return identity.pubs.matches(channel)
