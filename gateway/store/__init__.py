"""Redis: the client the gateway shares, its pipelined wire for scripts, and the circuit
breaker that turns an unreachable Redis into a fast, typed ``StoreUnavailable``."""
