"""The studio's entry script: page setup, the sidebar (home and model) and navigation between the pages."""

import streamlit as st

from studio.app import context

st.set_page_config(page_title="tokensmith studio", page_icon="🪙", layout="wide")

# Emoji icons: Material icons would make the browser fetch a favicon from the internet.
TRAIN = st.Page("views/train.py", title="Train", icon="🎓", url_path="train")
PAGES = [
    TRAIN,
    st.Page("views/library.py", title="Library", icon="📚", url_path="library"),
    st.Page("views/blend.py", title="Blend", icon="🧪", url_path="blend"),
    st.Page("views/generate.py", title="Generate", icon="🎨", url_path="generate"),
    st.Page("views/lab.py", title="Lab", icon="🔬", url_path="lab"),
    st.Page("views/inspect.py", title="Inspect", icon="🔎", url_path="inspect"),
]


def start() -> None:
    """The app's root opens the Train page at its own address, /train: Streamlit serves a default page only
    at the root, so a bookmarked or typed /train would find no page."""
    st.switch_page(TRAIN, query_params=st.query_params.to_dict())


page = st.navigation(
    [st.Page(start, title="Train", url_path="start", default=True, visibility="hidden"), *PAGES]
)
context.sidebar_ui()
page.run()
