"""The audience explorer: ``streamlit run app.py``. Router only; the pages live in pages/.

The menu is declared before anything heavy is imported: on a server's first request Streamlit
shows every file of ``pages/`` in the sidebar until ``st.navigation`` runs, so the app's own
menu must come first. ``pages.widgets`` (pandas, SQLAlchemy, the store) is imported after it.
"""
from __future__ import annotations

import streamlit as st

from pages import app_icon, app_navigation, login_gate

st.set_page_config(page_title="Audience explorer", page_icon=app_icon(), layout="wide")
nav = app_navigation()
login_gate()  # only where [auth] is configured in .streamlit/secrets.toml

# The spinner shows only if this takes over half a second (a fresh clone compiling its bytecode):
# the main area is never blank without a word.
with st.spinner("Opening the audience explorer…"):
    from pages import widgets  # noqa: E402  (heavy: after the menu is on screen)

    widgets.sidebar()
nav.run()
