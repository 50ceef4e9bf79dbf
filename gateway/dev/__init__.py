"""Development services: the embedded Redis-compatible server, the simulator started for
`make run`, and the process helpers they and the benchmarks share."""
