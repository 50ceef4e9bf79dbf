"""`make bench`: the gateway against direct and nginx, on loopback (see docs/benchmarks.md)."""
