"""The studio's entry script: page setup, the sidebar (home and model) and navigation between the pages."""

import streamlit as st

from studio.app import context

st.set_page_config(page_title="tokensmith studio", page_icon="🪙", layout="wide")

# Emoji icons: Material icons would make the browser fetch a favicon from the internet.
PAGES = [
    st.Page("views/train.py", title="Train", icon="🎓", url_path="train", default=True),
    st.Page("views/library.py", title="Library", icon="📚", url_path="library"),
    st.Page("views/blend.py", title="Blend", icon="🧪", url_path="blend"),
    st.Page("views/generate.py", title="Generate", icon="🎨", url_path="generate"),
    st.Page("views/lab.py", title="Lab", icon="🔬", url_path="lab"),
    st.Page("views/inspect.py", title="Inspect", icon="🔎", url_path="inspect"),
]

page = st.navigation(PAGES)
context.sidebar_ui()
page.run()
