"""Where ``[auth]`` is configured (OpenID Connect, ``st.login``), only signed-in users see
the app; without it the app is open (and listens on localhost only)."""
from __future__ import annotations

from streamlit.testing.v1 import AppTest

from apphelpers import APP


def _app(user: dict) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.user = user
    return at.run()


def test_signed_out_users_get_only_the_login_button(app_store) -> None:
    at = _app({"is_logged_in": False})
    assert not at.exception
    assert [b.label for b in at.button] == ["Log in"]
    assert [t.value for t in at.title] == ["Audience explorer"]
    assert not [s.value for s in at.subheader]           # no datasets, runs, links
    assert "Sign in to see the datasets" in at.markdown[0].value


def test_signed_in_users_see_the_app_and_their_name(app_store) -> None:
    at = _app({"is_logged_in": True, "name": "Ana Analyst", "email": "ana@example.com"})
    assert not at.exception
    assert "Signed in as Ana Analyst" in [c.value for c in at.sidebar.caption]
    assert "Log out" in [b.label for b in at.sidebar.button]
    assert "Where to go next" in [s.value for s in at.subheader]


def test_without_auth_configured_there_is_no_gate(app_store) -> None:
    at = _app({"email": "test@example.com"})                # AppTest's default user
    assert not at.exception
    assert "Log in" not in [b.label for b in at.button]
    assert "Where to go next" in [s.value for s in at.subheader]
