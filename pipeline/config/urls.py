"""URLs shown to people (messages, logs, status) with every credential masked: a queue
URL's password, a webhook's user:password. The core and the workers both show URLs, so
the one way of masking them lives here."""

from __future__ import annotations

import urllib.parse

# Query parameters of a Redis URL that carry no secret (redis-py's own parsers, and a few
# harmless connection settings): their values are shown. Every other parameter's value
# is masked: password, username, ssl_password, ssl_keyfile, and any name not listed here.
_SAFE_QUERY = frozenset({
    "db", "socket_timeout", "socket_connect_timeout", "socket_read_size", "socket_keepalive",
    "retry_on_timeout", "max_connections", "health_check_interval", "ssl_check_hostname", "ssl_cert_reqs",
    "ssl_min_version", "timeout", "protocol", "client_name", "decode_responses",
})
MASK = "***"


def redact(url: str) -> str:
    """The URL with every credential masked, for logs and messages.

    The URL is taken apart, not searched for a known password: the userinfo (user and
    password) is everything between `scheme://` and the *last* '@', so a password holding
    '@', '/', '?' or ':' unencoded is masked whole; it becomes `***`. Query parameters
    keep their names, and their values unless the name is in `_SAFE_QUERY`; a fragment
    is masked. When the text cannot be told apart (an '@' that may belong to a query
    value or to a password), more is masked, never less."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, sep, rest = url.partition(":")
        if not sep:
            return url
    else:
        sep = "://"
    _userinfo, at, hostpart = rest.rpartition("@")   # no '@': ('', '', rest)
    hostpart, hash_, _fragment = hostpart.partition("#")
    location, question, query = hostpart.partition("?")
    if question:
        shown = []
        for pair in query.split("&"):
            name, eq, value = pair.partition("=")
            safe = urllib.parse.unquote_plus(name).lower() in _SAFE_QUERY
            shown.append(name + eq + (value if safe else MASK) if eq else (name if safe else MASK))
        location += "?" + "&".join(shown)
    if hash_:
        location += "#" + MASK
    return f"{scheme}{sep}{MASK + '@' if at else ''}{location}"
