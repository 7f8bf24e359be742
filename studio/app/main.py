"""The studio's entry script: page setup, the sidebar (home and model) and navigation between the pages."""

import streamlit as st

from studio.app import context

st.set_page_config(page_title="tokensmith studio", page_icon="🪙", layout="wide")

# Emoji icons: Material icons would make the browser fetch a favicon from the internet.
# Train is the default page, served at the root (the address `tokensmith ui` prints) with no redirect, so
# the browser's Back button leaves it. Its url_path only names it inside Streamlit ("train" is the hidden
# page below, for an address typed or bookmarked by the page's name).
TRAIN = st.Page("views/train.py", title="Train", icon="🎓", url_path="training", default=True)
PAGES = [
    TRAIN,
    st.Page("views/library.py", title="Library", icon="📚", url_path="library"),
    st.Page("views/blend.py", title="Blend", icon="🧪", url_path="blend"),
    st.Page("views/generate.py", title="Generate", icon="🎨", url_path="generate"),
    st.Page("views/lab.py", title="Lab", icon="🔬", url_path="lab"),
    st.Page("views/inspect.py", title="Inspect", icon="🔎", url_path="inspect"),
]


def to_train() -> None:
    """/train (the page's name, typed or bookmarked) opens Train at the root, with the address's query: a
    default page is served only at the root, and /train would otherwise find no page."""
    st.switch_page(TRAIN, query_params=st.query_params.to_dict())


page = st.navigation([*PAGES, st.Page(to_train, title="Train", url_path="train", visibility="hidden")])
context.sidebar_ui()
page.run()
