"""Cryptographic structures: DER, CMS (RFC 5652) and signatures by key type; pure, keyless until called."""
