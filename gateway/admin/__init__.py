"""Quota administration: the admin HTTP API under ``/admin/v1``, its audit log and its CLI.

``routes`` is the only module here that imports Starlette; ``cli`` only the standard library,
so ``gateway admin ...`` starts fast and needs no server-side dependencies."""
