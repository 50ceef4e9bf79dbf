"""Video jobs: create, poll, list, delete, remix and download, isolated per team.

Every id a caller names is checked against the registry before anything goes upstream; another
team's id answers exactly like an unknown one. Each job is polled and downloaded with the
upstream key that created it (an upstream job belongs to the account that made it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.auth.principal import Principal
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    StoreUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.metering.prices import allowed
from gateway.quota.service import QuotaService
from gateway.settings import TeamSettings, VideoSettings, models_of
from gateway.upstream import rewrite
from gateway.upstream.client import (
    UpstreamClient,
    UpstreamRequest,
    UpstreamResponse,
    caller_error,
)
from gateway.videos import dialect
from gateway.videos.create_request import CreateRequest, Upload, parse_create
from gateway.videos.events import VideoEvents
from gateway.videos.idempotency import Claim, IdempotencyStore, fingerprint, valid_key
from gateway.videos.registry import Job, JobRegistry, new_video_id
from gateway.videos.url_policy import Resolver, check_image_url, system_resolver

log = logging.getLogger("gateway.videos")

_JSON = ((b"content-type", b"application/json"), (b"accept", b"application/json"))
VARIANTS = ("video", "thumbnail", "spritesheet")
UNSUPPORTED = ("edits", "extensions", "characters")


# A refund Redis could not take (its breaker open) is tried again, first after this, then
# twice as long each time up to REFUND_RETRY_MAX_S, for REFUND_RETRY_FOR_S at most.
REFUND_RETRY_S = 0.5
REFUND_RETRY_MAX_S = 30.0
REFUND_RETRY_FOR_S = 3600.0
REFUNDS_OWED_MAX = 1000  # refunds one replica keeps trying at once
_UPSTREAM_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


def _unknown(message: str) -> UpstreamError:
    exc = UpstreamError(message, headers={"x-should-retry": "false"})
    exc.maybe_processed = True  # the upstream answered 2xx: a job may exist there
    return exc


def _key_in_use() -> GatewayError:
    return GatewayError(
        "A request with this Idempotency-Key is still being processed; retry shortly.",
        code="idempotency_key_in_use",
        param="Idempotency-Key",
        status=409,
        headers={"retry-after": "1", "retry-after-ms": "1000"},
    )


def _outcome_unknown() -> UpstreamError:
    return UpstreamError(
        "The first request with this Idempotency-Key reached the upstream with an "
        "unknown outcome; the gateway does not send it again.",
        headers={"x-should-retry": "false"},
    )


def not_found() -> NotFound:
    # One answer for "no such id" and "someone else's id": existence must not leak.
    return NotFound("No video found with that id.", code="not_found", param="video_id")


@dataclass(frozen=True)
class Answer:
    body: dict[str, Any]
    headers: dict[str, str]


class VideoService:
    def __init__(
        self,
        client: UpstreamClient,
        registry: JobRegistry,
        settings: VideoSettings,
        *,
        teams: Mapping[str, TeamSettings],
        secrets: Callable[[], Iterable[str]],
        clock: Callable[[], float],
        resolve: Resolver = system_resolver,
        quota: QuotaService | None = None,
        idempotency: IdempotencyStore | None = None,
        events: VideoEvents | None = None,
        create_timeout: float | None = None,
    ) -> None:
        self.client = client
        self.registry = registry
        self.settings = settings
        self.teams = teams
        self.secrets = secrets
        self.clock = clock
        self.resolve = resolve
        self.quota = quota
        self.idempotency = idempotency
        self.events = events or VideoEvents()
        # The longest a create may take upstream, retries and answer included: the reconciler
        # takes a reservation with no job for a dead replica's only after longer than this.
        self.create_timeout = create_timeout
        self._owed: set[asyncio.Task[None]] = set()  # refunds waiting for Redis to return

    async def aclose(self) -> None:
        """Stop retrying refunds (their reservations then wait for the reconciler)."""
        for task in list(self._owed):
            task.cancel()
        for task in list(self._owed):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- helpers ----------------------------------------------------------------------------

    def _check_model(self, who: Principal, name: str) -> None:
        """The team's ``models:`` and the gateway key's scope bind videos as every call."""
        if not allowed(name, models_of(self.teams, who.team)):
            raise PermissionDenied(
                f"Team '{who.team}' may not use the model '{name}'.",
                code="model_not_allowed",
                param="model",
            )
        if who.key is not None and not allowed(name, who.key.models):
            raise PermissionDenied(
                f"API key '{who.key.name}' may not use the model '{name}'.",
                code="model_not_allowed",
                param="model",
            )

    def _force_private(self, team: str) -> bool:
        for conf in (self.teams.get(team), self.teams.get("default")):
            if conf is not None and conf.videos_private is not None:
                return conf.videos_private
        return self.settings.force_private

    async def _call_json(self, req: UpstreamRequest) -> tuple[dict[str, Any], str]:
        """The upstream's JSON answer and the id of the key that got it. A POST the upstream
        accepted (2xx) whose answer then breaks off, runs too long or is not JSON may have
        created a job: that is an unknown outcome, never a refusal."""
        resp = await self.client.send(req)
        accepted = req.method == "POST" and 200 <= resp.status < 300
        try:
            try:
                raw = await resp.read(4 * 1024 * 1024)
            except GatewayError:
                if accepted:
                    raise _unknown(
                        "The upstream accepted the job but its answer broke off."
                    ) from None
                if req.method == "POST" and resp.status >= 500:
                    # A 5xx is an unknown outcome whether or not its body can be read.
                    raise _unknown("The upstream failed and its answer broke off.") from None
                raise
            if resp.status >= 400:
                raise caller_error(resp, raw, self.secrets(), unsafe=req.method == "POST")
            try:
                doc = json.loads(raw)
            except (ValueError, RecursionError):
                if accepted:
                    raise _unknown(
                        "The upstream accepted the job but its answer is not JSON."
                    ) from None
                raise UpstreamError("The upstream answered something that is not JSON.") from None
            resp.finish()
            return (doc if isinstance(doc, dict) else {}), resp.key_id
        finally:
            resp.close()

    def _answer(self, job: Job, base_url: str) -> Answer:
        err = None
        if job.status == "failed":
            err = {
                "code": job.error_code or "generation_failed",
                "message": job.error_message or "The video generation failed.",
            }
        body = dialect.video_object(
            video_id=job.id,
            model=job.model,
            status=dialect.normalise_status(job.status),
            progress=job.progress,
            created_at=job.created_at,
            completed_at=job.completed_at,
            expires_at=None,
            prompt=job.prompt,
            size=job.size,
            seconds=job.seconds,
            remixed_from=job.remixed_from,
            error=err,
            content_url=f"{base_url}/v1/videos/{job.id}/content",
        )
        headers = {}
        if not job.finished:
            headers["openai-poll-after-ms"] = str(self.settings.poll_after_ms)
        return Answer(body, headers)

    async def _apply(self, job: Job, up: dialect.UpstreamVideo) -> Job:
        changes: dict[str, Any] = {"status": up.status, "progress": up.progress}
        if up.status in ("completed", "failed") and job.completed_at is None:
            changes["completed_at"] = int(self.clock())
        if up.status == "failed":
            # Upstream text, shown to the caller: redacted like any upstream error answer.
            secrets = tuple(self.secrets())
            changes["error_code"] = rewrite.redact(up.error_code or "generation_failed", secrets)
            changes["error_message"] = rewrite.redact(
                up.error_message or "The video generation failed.", secrets
            )[:1000]
        if any(getattr(job, k) != v for k, v in changes.items()):
            job = await self.registry.update(job, **changes)
        # Every poll that sees the end tries to settle; the script lets exactly one through.
        await self._settle_if_finished(job)
        return job

    # -- operations -------------------------------------------------------------------------

    async def create(
        self,
        who: Principal,
        fields: Mapping[str, Any],
        *,
        upload: Upload | None,
        request_id: str,
        base_url: str,
        source: Job | None = None,
        idempotency_key: str | None = None,
    ) -> Answer:
        req = parse_create(
            fields,
            self.settings,
            force_private=self._force_private(who.team),
            upload=upload,
            source_model=source.model if source else None,
        )
        self._check_model(who, req.model)
        if req.image_url is not None:
            await check_image_url(
                req.image_url, allowed_hosts=self.settings.url_allowed_hosts, resolve=self.resolve
            )
        path = f"/v1/videos/{source.upstream_id}/remix" if source else "/v1/videos"
        if idempotency_key is None or self.idempotency is None:
            return await self._create_new(who, req, path, source, request_id, base_url)
        key = idempotency_key
        if not valid_key(key):
            raise InvalidRequest(
                "Idempotency-Key must be 1 to 255 visible ASCII characters.",
                code="invalid_value",
                param="Idempotency-Key",
            )
        fp = fingerprint({"path": path, "body": req.body})
        claim = await self._idempotent(who.team, key, fp)
        if claim.fingerprint == fp and await self._came_to_nothing(who.team, claim):
            assert self.idempotency is not None
            if await self.idempotency.forget(who.team, key, claim.video_id):
                claim = await self._idempotent(who.team, key, fp)
        if claim.state != "new":
            return await self._replay(who, claim, fp, request_id, base_url)
        token = claim.token

        async def sent(video_id: str) -> None:
            assert self.idempotency is not None
            if not await self.idempotency.sent(who.team, key, token, video_id):
                # Its claim expired while this request stalled, and another may hold the key
                # now: this create does not leave.
                raise _key_in_use()

        try:
            answer = await self._create_new(
                who, req, path, source, request_id, base_url, before_send=sent
            )
        except GatewayError as exc:
            await self._idempotent_end(
                who.team, key, token, "unknown" if exc.maybe_processed else "released"
            )
            raise
        await self._idempotent_end(who.team, key, token, "done", str(answer.body["id"]))
        return answer

    async def _idempotent(self, team: str, key: str, fp: str) -> Claim:
        assert self.idempotency is not None
        return await self.idempotency.begin(team, key, fp)

    async def _came_to_nothing(self, team: str, claim: Claim) -> bool:
        """A sent create that is no longer under way, made no job and was refunded: it
        certainly did nothing (a refusal after its key was marked sent, whose release Redis
        lost), so its key is free again rather than an unknown outcome for the whole window."""
        if claim.state != "sent" or claim.in_flight or self.quota is None or not claim.video_id:
            return False
        if await self.registry.owned(claim.video_id, team) is not None:
            return False
        return await self.quota.refunded(team, claim.video_id)

    async def _idempotent_end(
        self, team: str, key: str, token: str, state: str, video_id: str = ""
    ) -> None:
        assert self.idempotency is not None
        try:
            if state == "released":
                await self.idempotency.release(team, key, token)
            else:
                await self.idempotency.finish(team, key, token, state, video_id)
        except StoreUnavailable:
            # The key stays as it was (pending, or sent and kept for the window): a retry gets
            # the job, a 409, or an unknown outcome, never a second job.
            log.warning("could not record the end of an idempotent create")

    async def _replay(
        self, who: Principal, claim: Claim, fp: str, request_id: str, base_url: str
    ) -> Answer:
        if claim.fingerprint != fp:
            raise GatewayError(
                "This Idempotency-Key was already used with a different request.",
                code="idempotency_key_reused",
                param="Idempotency-Key",
                status=422,
            )
        if claim.state == "pending":
            raise _key_in_use()
        if claim.state == "unknown":
            raise _outcome_unknown()
        if claim.state == "sent":
            # Its create left, and how it ended was not recorded (yet): the job if it was made,
            # a 409 while it may still be under way, else an unknown outcome.
            job = await self.registry.owned(claim.video_id, who.team) if claim.video_id else None
            if job is None:
                raise _key_in_use() if claim.in_flight else _outcome_unknown()
        else:
            job = await self._owned(who, claim.video_id)
        return self._answer(await self.refresh(job, request_id=request_id), base_url)

    async def _create_new(
        self,
        who: Principal,
        req: CreateRequest,
        path: str,
        source: Job | None,
        request_id: str,
        base_url: str,
        *,
        before_send: Callable[[str], Awaitable[None]] | None = None,
    ) -> Answer:
        video_id = new_video_id()
        if self.quota is not None:
            # Reserved before anything goes upstream: a rejected team costs nothing.
            await self.quota.reserve(
                who.team,
                video_id,
                self.quota.policy.cost(req.model, req.seconds, req.size),
                user=who.user,
                model_name=req.model,
                key=who.key,
            )
        try:
            if self.quota is not None:
                # Before it leaves: should the job never be recorded (Redis failing after the
                # upstream accepted it, a replica dying mid-call), the reconciler keeps this
                # charge instead of refunding it as never sent.
                await self.quota.mark_sent(who.team, video_id)
            if before_send is not None:
                await before_send(video_id)
            try:
                async with asyncio.timeout(self.create_timeout):
                    doc, key_id = await self._call_json(
                        UpstreamRequest(
                            method="POST",
                            path=path,
                            query="",
                            headers=_JSON,
                            body=json.dumps(req.body).encode(),
                            route="/v1/videos",
                            request_id=request_id,
                            key_id=source.key_id if source else None,
                            team=who.team,
                        )
                    )
            except TimeoutError:
                exc = UpstreamTimeout(
                    "The upstream did not finish answering the create in time; the job may "
                    "exist there, so it stays charged and is not sent again.",
                    headers={"x-should-retry": "false"},
                )
                exc.maybe_processed = True
                raise exc from None
            try:
                up = dialect.parse_upstream(doc)
            except ValueError:
                raise _unknown(
                    "The upstream accepted the job but its answer could not be read."
                ) from None
            if not up.id:
                raise _unknown("The upstream's answer named no job.")
            if not _UPSTREAM_ID.fullmatch(up.id) or up.id in (".", ".."):
                # It goes into the paths of every later call with the job's key: a "/", "?"
                # or dot segment there would reach another route of the upstream.
                raise _unknown("The upstream's answer named its job with an unusable id.")
        except GatewayError as exc:
            await self._create_failed(who.team, video_id, exc)
            raise
        now = self.clock()
        job = Job(
            id=video_id,
            team=who.team,
            user=who.user,
            upstream_id=up.id,
            key_id=key_id,
            model=req.model,
            size=req.size,
            seconds=req.seconds,
            prompt=req.prompt,
            created_at=int(now),
            created_ms=int(now * 1000),
            remixed_from=source.id if source else None,
        )
        job.status, job.progress = up.status, up.progress
        try:
            await self.registry.add(job)
        except GatewayError:
            # The upstream runs the job, but without its record nobody can see it: never
            # refunded here, and never a retry that would make a second one.
            if self.quota is not None:
                with contextlib.suppress(GatewayError):
                    await self.quota.mark_unknown(who.team, video_id)
            raise _unknown(
                "The upstream accepted the job but the gateway could not record it; it is "
                "charged and is not sent again."
            ) from None
        spend = 0.0
        if self.quota is not None:
            spend = self.quota.policy.cost(req.model, req.seconds, req.size).spend
        self.events.created(job.team, job.model, job.seconds, spend)
        try:
            await self._settle_if_finished(job)
        except GatewayError:
            log.warning("create %s: settling left to the reconciler", video_id)
        return self._answer(job, base_url)

    async def _create_failed(self, team: str, video_id: str, exc: GatewayError) -> None:
        """Refund a create the upstream certainly did not run; keep one it may have run."""
        if self.quota is None:
            return
        if exc.maybe_processed:
            # Never re-sent and never refunded here: the reconciler settles it (charge kept).
            await self.quota.mark_unknown(team, video_id)
            log.warning("create %s: upstream outcome unknown, reservation kept", video_id)
            return
        try:
            await self.quota.settle(team, video_id, "refunded")
        except StoreUnavailable:
            # The caller is told what the upstream said (a refusal is not a reason to retry).
            # The create certainly did not run, but its reservation may be marked sent (a mark
            # whose reply was lost lands when Redis thaws), which the reconciler would keep as
            # a create that ran: the refund is tried again until Redis takes it.
            log.warning("create %s: its refund could not be written yet; retrying", video_id)
            self._refund_later(team, video_id)

    def _refund_later(self, team: str, video_id: str) -> None:
        if len(self._owed) >= REFUNDS_OWED_MAX:
            log.warning("create %s: too many refunds owed; the reconciler settles it", video_id)
            return
        task = asyncio.get_running_loop().create_task(self._refund_when_back(team, video_id))
        self._owed.add(task)
        task.add_done_callback(self._owed.discard)

    async def _refund_when_back(self, team: str, video_id: str) -> None:
        assert self.quota is not None
        delay, waited = REFUND_RETRY_S, 0.0
        while waited < REFUND_RETRY_FOR_S:
            await asyncio.sleep(delay)
            waited += delay
            try:
                await self.quota.settle(team, video_id, "refunded")
                log.warning("create %s: refunded once Redis was back", video_id)
                return
            except StoreUnavailable:
                delay = min(delay * 2, REFUND_RETRY_MAX_S)
            except Exception:
                log.exception("create %s: its refund failed; the reconciler settles it", video_id)
                return
        log.warning("create %s: Redis stayed away; the reconciler settles it", video_id)

    async def _settle_if_finished(self, job: Job) -> None:
        if job.finished and await self.registry.first_to_see_the_end(job.id):
            duration = max(0.0, self.clock() - job.created_ms / 1000)
            self.events.finished(job.team, job.model, job.status, duration)
        if self.quota is None:
            return
        if job.status == "completed":
            await self.quota.settle(job.team, job.id, "kept", key_id=job.key_id)
        elif job.status == "failed":
            await self.quota.settle(job.team, job.id, "refunded")
        else:
            await self.quota.renew(job.team, job.id)

    async def retrieve(
        self, who: Principal, video_id: str, *, request_id: str, base_url: str
    ) -> Answer:
        job = await self._owned(who, video_id)
        return self._answer(await self.refresh(job, request_id=request_id), base_url)

    async def refresh(self, job: Job, *, request_id: str) -> Job:
        """Bring an unfinished job up to date: at most one upstream call per poll interval."""
        if job.finished:
            return job
        if self.clock() * 1000 - job.created_ms > self.settings.deadline_seconds * 1000:
            job = await self.registry.update(
                job,
                status="failed",
                completed_at=int(self.clock()),
                error_code="timeout",
                error_message="The video did not finish before the gateway's deadline.",
            )
            await self._settle_if_finished(job)
            return job
        interval = int(self.settings.poll_interval_seconds * 1000)
        if not await self.registry.claim_poll(job.id, interval):
            return job
        try:
            doc, _ = await self._call_json(
                UpstreamRequest(
                    method="GET",
                    path=f"/v1/videos/{job.upstream_id}",
                    query="",
                    headers=_JSON,
                    body=None,
                    route="/v1/videos/{id}",
                    request_id=request_id,
                    key_id=job.key_id,
                    # The team's call, whoever's request drove it: its 429s cool keys as the
                    # team's other calls do (one per cooldown period), not without bound.
                    team=job.team,
                    counted=False,  # short and read whole: never refused for held downloads
                )
            )
            return await self._apply(job, dialect.parse_upstream(doc))
        except (GatewayError, ValueError) as exc:
            # A failed poll is not a failed job: answer the last known state, try again later.
            log.warning("status poll for %s failed: %s", job.id, type(exc).__name__)
            return job

    async def list(
        self,
        who: Principal,
        *,
        after: str | None,
        limit: str | None,
        order: str | None,
        base_url: str,
    ) -> Answer:
        try:
            n = int(limit) if limit is not None else 20
        except ValueError:
            raise InvalidRequest(
                "limit must be an integer.", code="invalid_value", param="limit"
            ) from None
        if not 1 <= n <= 100:
            raise InvalidRequest(
                "limit must be between 1 and 100.", code="invalid_value", param="limit"
            )
        if order not in (None, "asc", "desc"):
            raise InvalidRequest("order must be asc or desc.", code="invalid_value", param="order")
        if after is not None and await self.registry.owned(after, who.team) is None:
            raise not_found()
        jobs, more = await self.registry.page(
            who.team, after=after, limit=n, descending=order != "asc"
        )
        data = [self._answer(j, base_url).body for j in jobs]
        return Answer(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": more,
            },
            {},
        )

    async def delete(self, who: Principal, video_id: str) -> Answer:
        job = await self._owned(who, video_id)
        await self.registry.delete(job)
        return Answer({"id": job.id, "object": "video.deleted", "deleted": True}, {})

    async def remix(
        self,
        who: Principal,
        video_id: str,
        fields: Mapping[str, Any],
        *,
        request_id: str,
        base_url: str,
        idempotency_key: str | None = None,
    ) -> Answer:
        source = await self._owned(who, video_id)
        source = await self.refresh(source, request_id=request_id)
        if source.status != "completed":
            raise InvalidRequest(
                "Only a completed video can be remixed.", code="video_not_ready", param="video_id"
            )
        allowed = {k: v for k, v in fields.items() if k == "prompt"}
        if set(fields) - {"prompt"}:
            extra = sorted(set(fields) - {"prompt"})[0]
            raise InvalidRequest(
                f"Unknown parameter: {extra}.", code="unknown_parameter", param=extra
            )
        return await self.create(
            who,
            {**allowed, "seconds": source.seconds, "size": source.size},
            upload=None,
            request_id=request_id,
            base_url=base_url,
            source=source,
            idempotency_key=idempotency_key,
        )

    async def open_content(
        self,
        who: Principal,
        video_id: str,
        *,
        variant: str | None,
        headers: tuple[tuple[bytes, bytes], ...],
        request_id: str,
    ) -> tuple[Job, UpstreamResponse]:
        """The upstream's download response for an owned, completed job (caller must close)."""
        job = await self._owned(who, video_id)
        job = await self.refresh(job, request_id=request_id)
        if variant is not None and variant not in VARIANTS:
            raise InvalidRequest(
                f"variant must be one of {', '.join(VARIANTS)}.",
                code="invalid_value",
                param="variant",
            )
        if job.status != "completed":
            raise InvalidRequest(
                "The video is not ready yet; poll it until it is completed.",
                code="video_not_ready",
                param="video_id",
            )
        wanted = tuple((k, v) for k, v in headers if k in (b"range", b"if-range"))
        resp = await self.client.send(
            UpstreamRequest(
                method="GET",
                path=f"/v1/videos/{job.upstream_id}/content",
                query=f"variant={variant}" if variant else "",
                headers=wanted,
                body=None,
                route="/v1/videos/{id}/content",
                request_id=request_id,
                key_id=job.key_id,
                team=who.team,
            ),
            follow_redirects=True,
        )
        if resp.status >= 400 and resp.status != 416:
            try:
                raw = await resp.read(64 * 1024)
            except GatewayError:
                # Larger than that (a CDN's error page) or cut: read as no body. Closing is
                # what gives back the team's upstream connection and the key's count.
                raw = b""
            finally:
                resp.close()
            exc = caller_error(resp, raw, self.secrets(), unsafe=False)
            # The registry saw this job complete, so an upstream that no longer knows the task
            # has dropped it (result URLs expire; a dev simulator forgets on restart). Waiting
            # cannot bring it back, so unlike a job still running this is final.
            if exc.code == "task_not_exist" or (
                resp.status == 404
                and exc.code != "variant_not_found"
                and variant in (None, "video")
            ):
                raise GatewayError(
                    "The upstream no longer has this video's content (result URLs are "
                    "temporary); create the video again.",
                    code="video_content_gone",
                    param="video_id",
                    status=410,
                    headers={"x-should-retry": "false"},
                )
            if resp.status == 404 or exc.code == "variant_not_found":
                raise NotFound(
                    f"The {variant or 'video'} variant is not available.",
                    code="variant_not_available",
                    param="variant",
                )
            if exc.code == "task_not_completed":
                raise InvalidRequest(
                    "The video is not available upstream yet.",
                    code="video_not_ready",
                    param="video_id",
                )
            raise exc
        return job, resp

    async def _owned(self, who: Principal, video_id: str) -> Job:
        job = await self.registry.owned(video_id, who.team)
        if job is None:
            raise not_found()
        return job
