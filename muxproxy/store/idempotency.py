"""The idempotency half of the store: when an ``Idempotency-Key`` is reserved,
replayed, or taken over. The binding to a job happens in
:meth:`~muxproxy.store.jobs.JobStore.create_job`'s transaction."""

from __future__ import annotations

import secrets

from muxproxy.pipeline.jobs import IdempotencyClaim
from muxproxy.store.accounts import IdempotencyRecord
from muxproxy.store.tx import Transactional, Tx


class IdempotencyStore(Transactional):
    async def idempotency_begin(self, key_id: str, idem_key: str, request_hash: str, *,
                                now: int, ttl_ms: int, owner: str,
                                create_step_ms: int) -> IdempotencyClaim | IdempotencyRecord:
        """Reserve ``idem_key`` for a request about to create a job (a claim, bound to
        the job by :meth:`create_job`), or the record already there.

        A reservation without a job is leased to its request for ``create_step_ms``
        from when it was made: until then a retry gets the record (in progress),
        whichever process holds it, since that process may be a live replica still
        creating the job. Once the lease lapsed, the request is taken as gone (its
        process died, or it never finished) and the retry takes the key over (a new
        claim); the overtaken request can no longer bind a job. ``owner`` is
        recorded for operators. A record whose job no longer exists is taken over."""
        claim = IdempotencyClaim(key_id, idem_key, secrets.token_hex(8))

        async def begin(tx: Tx) -> IdempotencyClaim | IdempotencyRecord:
            # Expired records go lazily: this key's, plus a bounded batch of others.
            await tx.purge_idempotency(key_id, idem_key, now)
            row = await tx.idempotency(key_id, idem_key)
            if row is not None:
                if row.job_id is not None and row.job_exists:
                    return IdempotencyRecord(request_hash=row.request_hash, job_id=row.job_id)
                leased = row.job_id is None and row.created_at > now - create_step_ms
                if leased:
                    return IdempotencyRecord(request_hash=row.request_hash, job_id=None)
            # New, or nothing was created under it before its lease lapsed (a crash,
            # or a request that never came back): the key starts over with this one.
            await tx.put_idempotency(claim, request_hash, owner, now, now + ttl_ms)
            return claim

        return await self._transaction(begin)

    async def idempotency_release(self, claim: IdempotencyClaim) -> None:
        """Drop a reservation that no job was bound to (the request failed before
        creating one); nothing happens once a job is bound or the key taken over."""
        await self._transaction(lambda tx: tx.drop_idempotency(claim))
