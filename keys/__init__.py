"""Key and certificate management: the trust layer every other part of zmqsec uses.

Nothing here knows about streams or bridges.  Public entry points:

* :class:`keys.ca.CertificateAuthority` -- a local CA: issue, revoke, CRL.
* :class:`keys.trust.TrustStore` -- validate a certificate against a hashed CA directory.
* :class:`keys.registry.ReaderRegistry` -- the certificates allowed to read a stream.
* :class:`keys.pemfiles.Credential` -- a certificate with its (0600) private key.
"""
