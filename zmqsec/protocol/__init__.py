"""The wire protocol of docs/PROTOCOL.md: pure codecs and crypto over bytes; no sockets, no files."""
