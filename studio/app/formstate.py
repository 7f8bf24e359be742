"""Form values that outlive a visit to another page.

Streamlit drops a widget's value at the end of a run that did not draw it, so a page left for the Library
and opened again would start empty. Each kept field's value is copied to a key no widget owns
(`_kept_<key>`), and set again from it when its widget is drawn:

    formstate.remember()                                          # first thing on the page
    st.text_area("Prompt", key=formstate.kept("gen_prompt", ""))  # its default here, not in the widget

A value is set only in the run that draws its widget: one set for a widget that a run does not draw stays
under the widget's later values and comes back when the widget is dropped again. The default comes
from here too, so no widget is given a default and a Session State value at once (Streamlit warns of that).
An upload cannot be put back: the browser holds the file, and a file uploader's value cannot be set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

KEPT = "_kept_"
# The help of every file uploader on a page with kept fields: its file is the one thing not kept.
UPLOAD_HELP = "An upload is not kept while another page is open: upload it again when you come back."


def remember() -> None:
    """Copy every kept field's current value (`kept` made the copy first); called first on a page, so the
    latest values are copied even when another page is opened before this run reaches its widgets."""
    for copy in [key for key in st.session_state if str(key).startswith(KEPT)]:
        key = copy[len(KEPT) :]
        if key in st.session_state:
            st.session_state[copy] = st.session_state[key]


def kept(key: str, default: Any, *, options: Sequence[Any] | None = None) -> str:
    """`key`, for the widget drawn next: its value (put back if Streamlit dropped it, else `default`) set
    again and copied. `options`: a selectbox's or radio's choices, when they change (the library's names):
    a choice no longer offered (renamed or deleted meanwhile) gives way to `default`."""
    value = st.session_state[key] if key in st.session_state else st.session_state.get(KEPT + key, default)
    if options is not None and value not in options:
        value = default
    # set at every run, not only when put back (Streamlit's own pattern): the browser then shows what the
    # server holds even when the two saw a page switch differently (a page link clicked mid-run)
    st.session_state[key] = st.session_state[KEPT + key] = value
    return key
