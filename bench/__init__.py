"""`make bench`: the gateway against direct and nginx, on loopback (see README, Benchmarks)."""
