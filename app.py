"""The audience explorer: ``streamlit run app.py``. Router only; the pages live in pages/."""
from __future__ import annotations

import streamlit as st

from pages import widgets

st.set_page_config(page_title="Audience explorer", page_icon=widgets.app_icon(), layout="wide")

nav = widgets.app_navigation()
widgets.sidebar()
nav.run()
