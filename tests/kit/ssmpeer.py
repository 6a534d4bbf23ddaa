"""APEL SSM's receiver, as its ssm/crypto.py and ssm/ssm2.py do it: the openssl CLI and string checks.

Used as an independent acceptance check: a body this accepts is one the real
SSM receiver accepts.  It mirrors SSM's steps -- decrypt when the text
mentions application/pkcs7-mime (``openssl smime -decrypt``), extract the
signer (``openssl smime -pk7out | openssl pkcs7 -print_certs``), verify it
(``openssl verify -CApath [-crl_check_all]``, 'OK' and no 'error'), verify the
message (``openssl smime -verify -noverify``), split headers from body at the
first blank line, undo quoted-printable/base64, compare the signer DN (slash
form) with the valid-DN list -- and reports the same verdicts.
"""

from __future__ import annotations

import base64
import quopri
from subprocess import PIPE, Popen


def _run(args, text):
    """Pipe ``text`` through a command, as SSM's Popen calls do; (stdout, stderr) as text."""
    p = Popen(args, stdin=PIPE, stdout=PIPE, stderr=PIPE, universal_newlines=True)
    return p.communicate(text)


def decrypt(text, cert, key):
    """SSM's crypto.decrypt: ``openssl smime -decrypt``, whatever it prints."""
    out, _ = _run(["openssl", "smime", "-decrypt", "-recip", str(cert), "-inkey", str(key)], text + "\n\n")
    return out


def signer_cert(text):
    """SSM's crypto.get_signer_cert: ``openssl smime -pk7out | openssl pkcs7 -print_certs``."""
    pkcs7, _ = _run(["openssl", "smime", "-pk7out"], text + "\n\n")
    certs, _ = _run(["openssl", "pkcs7", "-print_certs"], pkcs7)
    return certs


def verify_cert(certstring, capath, check_crls):
    """SSM's crypto.verify_cert: ``openssl verify -CApath [-crl_check_all]``, 'OK' and no 'error' in its output."""
    args = ["openssl", "verify", "-CApath", str(capath)] + (["-crl_check_all"] if check_crls else [])
    message, _ = _run(args, certstring)
    return "OK" in message and "error" not in message


def subject(certstring):
    """SSM's crypto.get_certificate_subject: the slash-form subject ``openssl x509 -nameopt compat`` prints."""
    out, _ = _run(["openssl", "x509", "-noout", "-subject", "-nameopt", "compat"], certstring)
    return out.strip()[len("subject="):].strip()


def verify(text, capath, check_crls=True):
    """SSM's crypto.verify: the signer's chain, then ``openssl smime -verify -noverify``; (body, signer DN)."""
    text += "\n\n"
    signer = signer_cert(text)
    if not verify_cert(signer, capath, check_crls):
        raise ValueError("Unverified signer")
    message, error = _run(["openssl", "smime", "-verify", "-CApath", str(capath), "-noverify"], text)
    lines = message.strip().splitlines()
    try:
        blank = lines.index("")
    except ValueError:
        raise ValueError("No blank line between message header and body") from None
    headers, body = "\n".join(lines[:blank]), "\n".join(lines[blank + 1:])
    if "quoted-printable" in headers:
        body = quopri.decodestring(body)
    elif "base64" in headers:
        body = base64.b64decode(body)
    if not isinstance(body, str):
        body = body.decode()
    if "Verification successful" not in error:
        raise ValueError(f"Possible tampering: {error}")
    return body, subject(signer)


def receive(text, cert, key, capath, valid_dns, check_crls=True):
    """SSM's _handle_msg: returns (message, signer) or raises with SSM's reason."""
    if "application/pkcs7-mime" in text or "application/x-pkcs7-mime" in text:
        text = decrypt(text, cert, key)
    message, signer = verify(text, capath, check_crls)
    if signer not in valid_dns:
        raise ValueError(f"Signer not in valid DNs list: {signer}")
    return message, signer
