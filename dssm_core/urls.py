"""Database and server URLs shown to people: passwords hidden wherever a URL or a driver's
message is printed or logged (the CLI, job logs, the Redis publisher)."""
from __future__ import annotations

import re


def masked_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (also when SQLAlchemy cannot parse it),
    e.g. ``postgresql+psycopg://bob:***@db/x``, ``redis://:***@cache:6379/0``."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy knows: hide what looks like user:password@
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


def url_password(url: str) -> str | None:
    """The password written in ``url``, or None (also for a URL that does not parse)."""
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:
        return None
    return str(password) if password else None


def scrubbed(text: str, *passwords: str | None) -> str:
    """``text`` with each given password (if any) replaced by ``***``."""
    for password in passwords:
        if password:
            text = text.replace(str(password), "***")
    return text
