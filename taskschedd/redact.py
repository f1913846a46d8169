"""Secret redaction shared by config, logging and the CLIs.

It lives in its own tiny module so that config and log can both import it without
importing each other. Passwords in store URLs must never reach logs or CLI output.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host... The password may contain '@' (unescaped, a common
# mistake) but not '/' or whitespace, so the match stops at the last '@' before the
# host part and never swallows a path or a query string.
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:@/\s]*:)"
    r"(?P<secret>[^\s/]*?)"
    r"(?P<tail>@(?=[^@\s/?#]*(?:[/?#\s]|$)))"
)
# password=..., tlsCertificateKeyFilePassword=..., pwd=... in query strings or text.
_PARAM = re.compile(r"(?P<head>\b\w*(?:password|passwd|pwd|secret)=)(?P<secret>[^&\s;,'\"]+)", re.I)


def redact_url(url: str) -> str:
    """Return *url* with the password in its userinfo and any password=... masked."""
    return redact_text(url)


def redact_text(text: str) -> str:
    """Mask every URL password and password=... parameter found anywhere in *text*."""
    if "://" not in text and "=" not in text:
        return text  # fast path: nothing that could hold a secret
    text = _USERINFO.sub(lambda m: m["head"] + MASK + m["tail"], text)
    return _PARAM.sub(lambda m: m["head"] + MASK, text)
