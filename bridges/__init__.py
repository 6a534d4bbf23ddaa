"""Bridges between a zmqsec stream and other transports (STOMP/ActiveMQ for the EMI accounting protocol)."""
