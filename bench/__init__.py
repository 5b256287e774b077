"""eniplane benchmarks: throughput against the XDP ceiling and the Linux stack, per-packet cost,
flow setup and scale, and the control plane. Run with `python -m bench` or `eniplane bench`."""
