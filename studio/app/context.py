"""What every page shares: the home folder, the chosen model, and the cached (slow to build) back-ends.

Loaders are `st.cache_resource`d so a model loads once per process and the job registry outlives page runs
and browser reloads. The model spec and the job id also live in `st.query_params`, so a reload keeps them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from studio.cli import home_dir
from studio.jobs import JobRunner

DEFAULT_MODEL = "demo"
MODEL_HELP = (
    "`demo` (the built-in demo world), a local diffusers folder, a single-file `.safetensors`/`.ckpt` "
    "checkpoint, or a Hugging Face hub id (needs a network or a cached copy)."
)
# Errors a user can act on: shown with st.error at the page, never as a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, RuntimeError, LookupError)


def user_errors() -> tuple[type[BaseException], ...]:
    """USER_ERRORS plus the project's own family (imported lazily: the core may still be loading)."""
    from embeddings.errors import TokensmithError

    return (*USER_ERRORS, TokensmithError)


def error_text(exc: BaseException) -> str:
    """One line for the user: KeyError's message without the quotes repr() adds."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


# --- home and model ---


def home() -> Path:
    """The tokensmith home the studio serves ($TOKENSMITH_HOME, set by `tokensmith ui --home`)."""
    return home_dir()


def model_spec() -> str:
    """The model the pages use: the sidebar's choice, else ?model= from the URL, else the demo world."""
    if "model" not in st.session_state:
        st.session_state["model"] = st.query_params.get("model", DEFAULT_MODEL)
    return st.session_state["model"].strip() or DEFAULT_MODEL


def sidebar_ui() -> str:
    """The sidebar: which model the pages use and where the home is. Returns the model spec."""
    model_spec()  # seed the widget's state from the URL before the widget exists
    with st.sidebar:
        spec = st.text_input("Model", key="model", help=MODEL_HELP).strip() or DEFAULT_MODEL
        if spec != DEFAULT_MODEL:
            st.query_params["model"] = spec
        elif "model" in st.query_params:
            del st.query_params["model"]
        st.caption(f"Home: `{home()}`")
    return spec


# --- cached back-ends ---


@st.cache_resource(show_spinner=False)
def job_runner(home_path: str) -> JobRunner:
    """One job registry per home and process: it keeps the trainer processes it started."""
    return JobRunner(Path(home_path))


def runner() -> JobRunner:
    return job_runner(str(home()))


def store() -> Any:
    """The embedding store of the home (cheap: it reads headers only when asked)."""
    from embeddings import Store

    return Store.for_home(home())


@st.cache_resource(show_spinner="Loading the model (once per studio process)…", max_entries=2)
def generation_session(spec: str) -> Any:
    """A generation Session for `spec`, loaded once and shared by every page and browser tab."""
    from studio.generation import Session

    return Session(spec)


@st.cache_resource(show_spinner="Loading the model (once per studio process)…", max_entries=2)
def loaded_model(spec: str) -> Any:
    """The LoadedModel of `spec` (its pipeline, family and encoders), for pages that need no sampling."""
    session = generation_session(spec)
    model = getattr(session, "model", None)
    if model is not None:
        return model
    from trainers.models import load_model

    return load_model(spec)
