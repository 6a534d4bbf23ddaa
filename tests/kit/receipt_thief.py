"""A TCP relay between a STOMP client and the broker that passes every frame but the broker's RECEIPTs.

The broker stores what the client sends (and a transaction it commits), and the client never learns it did:
the state a sender is in when the receipt is lost, or when it is killed between the broker's commit and its
own bookkeeping -- here for as long as the test wants, not for the few milliseconds a race would give.
Frames from the broker are told apart at their NUL: meant for a sender's connection, whose frames from the
broker (CONNECTED, RECEIPT, ERROR) carry no NUL in a body.
"""

from __future__ import annotations

import socket
import threading

from .ports import HOST


class ReceiptThief:
    """Listens on a free loopback port (``port``) and relays each connection to ``HOST:broker_port``."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.stolen = 0  # RECEIPT frames withheld
        self._server = socket.create_server((HOST, 0))
        self.port = self._server.getsockname()[1]
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:  # closed
                return
            broker = socket.create_connection((HOST, self.broker_port))
            self._open += [client, broker]
            threading.Thread(target=self._pipe, args=(client, broker, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(broker, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, from_broker: bool) -> None:
        pending = b""
        try:
            while data := source.recv(65536):
                if not from_broker:
                    sink.sendall(data)
                    continue
                # Broker to client: whole frames (each ends with NUL), RECEIPTs dropped; heart-beat newlines
                # between frames pass.
                pending += data
                *frames, pending = pending.split(b"\x00")
                for frame in frames:
                    if frame.lstrip(b"\r\n").startswith(b"RECEIPT"):
                        self.stolen += 1
                        sink.sendall(frame[:len(frame) - len(frame.lstrip(b"\r\n"))])
                    else:
                        sink.sendall(frame + b"\x00")
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Stop listening and cut every relayed connection."""
        self._server.close()
        for conn in self._open:
            try:
                conn.close()
            except OSError:
                pass
