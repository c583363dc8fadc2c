"""The app's page scripts (run by ``app.py``'s ``st.navigation``) and their shared widgets.

A regular package (not a namespace one) so ``from pages import widgets`` resolves the same way
whatever the process's ``sys.path`` holds.

The menu lives here, not in ``widgets``, because it must be on screen before anything heavy is
imported: on a server's first request Streamlit would list every file of ``pages/``
(``widgets`` included) in the sidebar until the main script calls ``st.navigation`` (see
:func:`app_navigation` for how that list is kept hidden), and importing ``widgets`` (pandas,
SQLAlchemy, the store) takes from half a second to several seconds on a fresh clone. ``app.py``
imports only this (streamlit, nothing else) before declaring the menu.
"""
from __future__ import annotations

from typing import Any

import streamlit as st

PAGES = {
    "home": "pages/home.py",
    "data": "pages/data.py",
    "train": "pages/train.py",
    "runs": "pages/runs.py",
    "embeddings": "pages/embeddings.py",
    "audience": "pages/audience.py",
}

#: (page key, title, icon) in menu order; the file is ``PAGES[key]``.
MENU = (
    ("home", "Home", ":material/home:"),
    ("data", "Data", ":material/upload_file:"),
    ("train", "Train", ":material/model_training:"),
    ("runs", "Runs", ":material/monitoring:"),
    ("embeddings", "Embedding maps", ":material/scatter_plot:"),
    ("audience", "Audience", ":material/groups:"),
)

#: Session flag: this session has declared the app's navigation (see widgets.route_through_app).
ROUTED_KEY = "_dssm_routed"


def app_navigation() -> Any:
    """The app's ``st.navigation`` over every page (``app.py`` runs what it returns).

    ``.streamlit/config.toml`` sets ``client.showSidebarNavigation = false``: that hides the
    list of ``pages/`` files Streamlit sends on a server's first request, before any of our
    code runs (declaring the menu first was not enough: under load the list was painted
    between the two messages). The option also hides ``st.navigation``'s sidebar menu, so it
    is switched back on here, just before the menu is declared (it is scriptable, and the
    automatic list never comes again once ``st.navigation`` has run in the process).
    """
    st.set_option("client.showSidebarNavigation", True)
    st.session_state[ROUTED_KEY] = True
    return st.navigation([
        st.Page(PAGES[key], title=title, icon=icon, default=(key == "home"))
        for key, title, icon in MENU
    ])


def login_gate() -> None:
    """With an ``[auth]`` section in ``.streamlit/secrets.toml`` (OpenID Connect, see the
    README's "Exposing the app"), only signed-in users get past this; without one the app is
    open, and listens on localhost only. Signed in, the sidebar names the user and offers
    *Log out*. Logging in needs ``pip install Authlib``, as ``st.login`` does."""
    user = st.user
    if "is_logged_in" not in user:  # no [auth] configured
        return
    if user.is_logged_in:
        with st.sidebar:
            st.caption(f"Signed in as {user.get('name') or user.get('email') or 'you'}")
            st.button("Log out", on_click=st.logout, key="_dssm_logout")
        return
    st.title("Audience explorer")
    st.markdown("Sign in to see the datasets, models and audiences.")
    st.button("Log in", on_click=st.login, type="primary", key="_dssm_login")
    st.stop()


def app_icon() -> Any:
    """The browser-tab icon, drawn here (a target: three rings), so the browser loads it from
    this server. A ``:material/...:`` page icon is an image on fonts.gstatic.com: a request
    outside the app on every page load (and a broken icon offline)."""
    import numpy as np
    from PIL import Image  # a Streamlit dependency

    y, x = np.mgrid[0:32, 0:32] - 15.5
    r = np.hypot(x, y)                                                   # (32, 32)
    ring = (r < 15.5) & ((r < 4) | ((r > 7) & (r < 10.5)) | (r > 13))
    img = np.zeros((32, 32, 4), np.uint8)
    img[ring] = (31, 119, 180, 255)
    return Image.fromarray(img, "RGBA")
