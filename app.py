"""The audience explorer: ``streamlit run app.py``. Router only; the pages live in pages/."""
from __future__ import annotations

import streamlit as st

from pages import widgets

st.set_page_config(page_title="Audience explorer", page_icon=":material/target:", layout="wide")

nav = st.navigation(
    [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/data.py", title="Data", icon=":material/upload_file:"),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/runs.py", title="Runs", icon=":material/monitoring:"),
        st.Page("pages/embeddings.py", title="Embedding maps", icon=":material/scatter_plot:"),
        st.Page("pages/audience.py", title="Audience", icon=":material/groups:"),
    ]
)
widgets.sidebar()
nav.run()
