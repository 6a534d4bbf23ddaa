"""The test suite's shared kit: helpers only, no tests.

* :mod:`kit.paths` -- where the repository, docs/, the vectors and the kit are;
* :mod:`kit.pki` -- the one way tests make CAs, credentials and stream sites;
* :mod:`kit.ports` -- free TCP ports on loopback;
* :mod:`kit.daemons` -- zmqsec daemons as real processes: start, feed, await their status files, stop;
* :mod:`kit.netns` -- running a driver script inside a fresh network namespace with loopback multicast;
* :mod:`kit.stomp_client` -- a STOMP client for checking what the broker holds;
* :mod:`kit.wire` -- a sender's output as ZeroMQ messages, and an insider who forges with the real key;
* :mod:`kit.opensslpeer`, :mod:`kit.ssmpeer` -- the openssl CLI and APEL SSM's receiver as independent peers;
* ``multicast_driver.py``, ``tree_driver.py`` -- scripts the e2e tests run inside a network namespace.

``tests/conftest.py`` puts ``tests/`` on ``sys.path`` (so ``from kit import ...`` works) and turns these into fixtures.
"""
