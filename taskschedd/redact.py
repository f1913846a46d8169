"""Secret redaction shared by config, logging and the CLIs.

It lives in its own tiny module so that config and log can both import it without
importing each other. Passwords in store URLs must never reach logs or CLI output.

Three layers, because a password may hold any character, escaped or not:

- :func:`redact_url` knows its argument is one URL. For ``mongodb://`` and
  ``mongodb+srv://`` everything between ``user:`` and the *last* ``@`` is the password
  (an unescaped ``/``, ``?``, ``#``, ``@`` or space included); when in doubt it masks more,
  never less.
- :func:`redact_text` finds URLs inside free text (log lines, driver errors), where the
  end of a URL is a guess: the pattern masks ``user:...@host``, and every password that a
  URL seen by :func:`redact_url` or :func:`remember_secret` held is masked wherever it
  appears, escaped or not.
- ``password=...`` style parameters are masked in both.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from taskschedd.osproc import set_title
from taskschedd.storeurl import MONGODB_SCHEMES

MASK = "***"

#: Secrets shorter than this are not searched for in free text (a 1-letter password would
#: mask every such letter); the URL patterns still mask them inside URLs.
MIN_SECRET = 4

# scheme://user:password@host... in free text. The password may contain '@' (unescaped, a
# common mistake) but not whitespace, nor '/' except in a MongoDB URL (where an '@' after
# a path is unusual, so masking too much is the only risk); the match stops at the last
# '@' before something that looks like a host list, so it never swallows a query string.
_USERINFO = re.compile(
    r"(?P<head>\b(?:(?P<mongo>mongodb(?:\+srv)?)|[A-Za-z][A-Za-z0-9+.\-]*)://[^:@/\s]*:)"
    r"(?P<secret>(?(mongo)[^\s]|[^\s/])*?)"
    r"(?P<tail>@(?=[^@\s/?#]*(?:[/?#\s]|$)))"
)
# password=..., tlsCertificateKeyFilePassword=..., pwd=... in query strings or text.
_PARAM = re.compile(r"(?P<head>\b\w*(?:password|passwd|pwd|secret)=)(?P<secret>[^&\s;,'\"]+)", re.I)
# authMechanismProperties=AWS_SESSION_TOKEN:...,SERVICE_NAME:... (its value holds commas).
_MECH = re.compile(r"(?P<head>\bauthMechanismProperties=)(?P<secret>[^&\s;'\"]+)", re.I)

_SECRETS: set[str] = set()


def remember_secret(secret: str) -> None:
    """Mask *secret* (and its percent-encoded and -decoded forms) in every later text."""
    for form in {secret, unquote(secret), quote(secret, safe="")}:
        if len(form) >= MIN_SECRET:
            _SECRETS.add(form)


def url_password(url: str) -> str | None:
    """The password part of a MongoDB URL as written (not decoded), None without one."""
    if not url.startswith(MONGODB_SCHEMES):
        return None
    rest = url.split("://", 1)[1]
    at = rest.rfind("@")
    if at < 0:
        return None
    _, colon, password = rest[:at].partition(":")
    return password if colon else None


def redact_url(url: str) -> str:
    """Return *url* with the password in its userinfo and any password=... masked."""
    password = url_password(url)
    if password is not None:
        remember_secret(password)
        scheme, rest = url.split("://", 1)
        at = rest.rfind("@")
        user = rest[:at].partition(":")[0]
        url = f"{scheme}://{user}:{MASK}@{rest[at + 1 :]}"
        return _params(url)
    return redact_text(url)


def _params(text: str) -> str:
    text = _MECH.sub(lambda m: m["head"] + MASK, text)
    return _PARAM.sub(lambda m: m["head"] + MASK, text)


def redact_text(text: str) -> str:
    """Mask every URL password and password=... parameter found anywhere in *text*."""
    if _SECRETS:
        for secret in sorted(_SECRETS, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
    if "://" not in text and "=" not in text:
        return text  # fast path: nothing that could hold a secret
    text = _USERINFO.sub(lambda m: m["head"] + MASK + m["tail"], text)
    return _params(text)


def hide_argv_secrets(argv: list[str]) -> bool:
    """Rewrite the command line that ps and /proc/PID/cmdline show with its URL passwords
    masked; True when something was hidden. It narrows the window, it cannot close it: the
    password was visible from exec until now. Give it in a file or the environment instead
    (store_password_file, TASKSCHED_STORE_FILE, TASKSCHED_STORE)."""
    shown = [redact_url(a) if a.startswith(MONGODB_SCHEMES) else redact_text(a) for a in argv]
    if shown == argv:
        return False
    return set_title(" ".join(shown))
