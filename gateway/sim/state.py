"""Everything the simulator remembers, exposed as ``app.state.sim`` for in-process tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.sim.config import SimConfig
from gateway.sim.faults import Fault
from gateway.sim.jobs import Job
from gateway.sim.usage import PromptCache

QUOTA_PER_USD = 500_000  # new-api's QuotaPerUnit


class SimState:
    def __init__(self, config: SimConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self.requests: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.aborted = 0  # streams that ended early: the client went away, or a drop fault
        # Keys new-api would refuse on every route, as it does: "disabled" (401, the token's
        # status) or "exhausted" (403, its quota used up). Set by tests, like faults.
        self.key_states: dict[str, str] = {}
        # Per key, the only models it may use (new-api's token model whitelist): others 403.
        self.key_models: dict[str, tuple[str, ...]] = {}
        self.prompt_cache = PromptCache()
        # GET /api/pricing: per model its new-api entry, and the group ratios (see pricing.py,
        # which fills them in create_sim_app). Tests change them to see a refresh.
        self.prices: dict[str, dict[str, Any]] = {}
        self.group_ratio: dict[str, float] = {}
        # Per key, the quota units new-api would have billed it (GET /api/usage/token).
        self.billed: dict[str, int] = {}

    def bill(self, key: str | None, model: str, totals: dict[str, Any]) -> None:
        """Charge ``key`` what new-api would for an answer with this ``usage``, in its quota
        units (500,000 a dollar), for ``GET /api/usage/token`` to report."""
        entry = self.prices.get(model)
        if key is None or entry is None:
            return
        group = self.group_ratio.get("default", 1)
        if entry.get("quota_type") == 1:
            quota = float(entry.get("model_price", 0)) * QUOTA_PER_USD * group
        else:
            inp = int(totals.get("prompt_tokens", totals.get("input_tokens", 0)))
            out = int(totals.get("completion_tokens", totals.get("output_tokens", 0)))
            details = totals.get("prompt_tokens_details") or totals.get("input_tokens_details")
            cached = int((details or {}).get("cached_tokens", 0))
            cache_ratio = float(entry.get("cache_ratio", 1))
            weighted = inp - cached + cached * cache_ratio + out * float(entry["completion_ratio"])
            quota = weighted * float(entry["model_ratio"]) * group
        self.billed[key] = self.billed.get(key, 0) + round(quota)

    def note_abort(self) -> None:
        self.aborted += 1

    def add_fault(self, **doc: Any) -> Fault:
        fault = Fault.from_json({"kind": None, **doc})
        self.faults.append(fault)
        return fault

    def job_for(self, job_id: str, key: str | None) -> Job | None:
        """The job, if ``key`` created it: new-api hides other accounts' tasks entirely."""
        job = self.jobs.get(job_id)
        return job if job is not None and job.key == key else None

    def requests_for(self, path_prefix: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].startswith(path_prefix)]

    def clear(self) -> None:
        # Jobs stay: a gateway under test may still hold their ids, like it would upstream.
        self.requests.clear()
        self.faults.clear()
