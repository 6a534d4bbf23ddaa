"""Thin drivers around the machines: sockets, timers, spools, status files."""
