"""Which local sessions belong to which user: the index behind the server API's `disconnect` and
`unsubscribe` by user. Only sessions auth has identified are in it (none when auth is off)."""

from __future__ import annotations

from typing import Any


class UserIndex:
    def __init__(self) -> None:
        self._sessions: dict[str, set[Any]] = {}

    def add(self, user: str, session: Any) -> None:
        sessions = self._sessions.get(user)
        if sessions is None:
            self._sessions[user] = {session}
        else:
            sessions.add(session)

    def remove(self, user: str, session: Any) -> None:
        sessions = self._sessions.get(user)
        if sessions is None:
            return
        sessions.discard(session)
        if not sessions:
            del self._sessions[user]

    def sessions_of(self, user: str) -> list[Any]:
        """The user's sessions on this worker (a copy: closing them changes the index)."""
        return list(self._sessions.get(user, ()))

    def __len__(self) -> int:
        return len(self._sessions)
