"""Members merged into another (the same person, found by ops: ``member.identity.merged``),
as this gateway process has heard of them: a session token issued before the merge names the
merged member, and is read as the survivor's from then on, on every route, without waiting
for the token's refresh. Best effort like the rest of the live feed: a process that missed the
event (down, restarted) still switches the session on ``/v1/me`` and on refresh (see
``service_layer.sessions``)."""

from __future__ import annotations

from collections import OrderedDict

from gateway.domain.shoppers import Session

#: Merges followed at most (a survivor merged again later is another hop).
MAX_HOPS = 4


class MergedMembers:
    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._survivors: OrderedDict[tuple[str, str], str] = OrderedDict()

    def record(self, mall_id: str, merged_id: str, survivor_id: str) -> None:
        self._survivors[(mall_id, merged_id)] = survivor_id
        self._survivors.move_to_end((mall_id, merged_id))
        while len(self._survivors) > self._limit:  # forget the oldest merges first
            self._survivors.popitem(last=False)

    def survivor(self, mall_id: str, member_id: str) -> str:
        for _ in range(MAX_HOPS):
            after = self._survivors.get((mall_id, member_id))
            if after is None:
                break
            member_id = after
        return member_id

    def resolve(self, session: Session) -> Session:
        """The session, naming the survivor if its member was merged."""
        if not session.member_id:
            return session
        survivor = self.survivor(session.mall_id, session.member_id)
        return session if survivor == session.member_id else session.with_member(survivor)
