"""Tools that ship beside the library: the demo, the benchmark harness, a local ActiveMQ runner."""
