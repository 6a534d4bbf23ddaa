"""The publisher's and the reader's state machines: events in, actions out; no I/O, no clock."""
