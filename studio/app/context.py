"""What every page shares: the home folder, the chosen model, and the cached (slow to build) back-ends.

Loaders are `st.cache_resource`d so a model loads once per process and the job registry outlives page runs
and browser reloads. The model spec and the job id also live in `st.query_params`, so a reload keeps them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import streamlit as st

from studio.cli import UsageError, home_dir
from studio.jobs import JobRunner

DEFAULT_MODEL = "demo"
MODEL_HELP = (
    "`demo` (the built-in demo world), a local diffusers folder, a single-file `.safetensors`/`.ckpt` "
    "checkpoint, or a Hugging Face hub id (needs a network or a cached copy)."
)
MODEL_CONFIG_HELP = (
    "Offline, a checkpoint file needs the configs of its architecture: a diffusers folder of the same kind "
    "of model (weights not needed), or a hub id that is cached. Leave empty with a network."
)
# Errors a user can act on: shown with st.error at the page, never as a traceback (LookupError: KeyError too).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, OSError, RuntimeError)
# What the core's messages say for a terminal user, and what the studio offers instead, on every page.
STUDIO_WORDS = {
    "`tokensmith list`": "the Library page",
    "use `tokensmith import` to convert": "import the file on the Library page to convert",
    # the trash holds no older copy of a stored file, and a plain re-import is refused as "already exists"
    "restore it from trash or re-import it": "re-import it on the Library page with “Replace stored "
    "embeddings of the same name” on",
    "; use --model demo": "; set the sidebar's Model to demo",
}
# The same for advice that names its subject, as (pattern, replacement) for re.sub.
STUDIO_PATTERNS: tuple[tuple[str, str], ...] = (
    # the case-twin hint renames the *other* embedding, which is not what a rename or restore here wants
    (r" \(or `tokensmith rename [^`]*`\)", ""),
    (
        r"rename it first \(`tokensmith rename (?P<name>[^`\s]+) NEW`\)",
        r"rename or delete the stored <\g<name>> first (open it in the Library)",
    ),
    (r"put it beside (?P<partner>.+?) and import their folder", r"upload it together with \g<partner>"),
    # embeddings.inject.model_advice: the studio's model is the sidebar's, not a flag
    (r"pass --model with an? (?P<family>.+?) model \(", r"set the sidebar's Model to an \g<family> model ("),
    # a rename onto a taken name: the Library's ways out, not the shell's "remove it"
    (
        r"'(?P<name>[^']+)' already exists; remove it first",
        r"<\g<name>> already exists: choose another name, or delete <\g<name>> first",
    ),
    # the doctor's warnings start with the tensor they are about: for an SD 1.x/2.x file (one tensor) that is
    # its internal key, nothing a user chose; SDXL's clip_l / clip_g say which encoder and stay
    (r"^emb_params: ", ""),
)
# A Python repr of the names a core message lists, read out as plain words: "keys ['clip_g', 'clip_l']" ->
# "keys clip_g, clip_l", "widths {'emb_params': 768}" -> "widths emb_params 768". Only after the words that
# introduce such a list, so text a message quotes (a prompt's "a ['red', 'blue'] ball") stays as written.
REPR_LIST = re.compile(r"\b(?P<words>keys|encoders) \[(?P<items>'[^'\[\]]*'(?:, '[^'\[\]]*')*)\]")
REPR_DICT = re.compile(r"\b(?P<words>widths) \{(?P<items>'[\w.-]+': [\d.]+(?:, '[\w.-]+': [\d.]+)*)\}")
# The core's advice names generate's flag; on the other pages the studio's control for it is on Generate.
GENERATE_FIELDS = {"--partial": "the Partial fit box on the Generate page"}
# The doctor's warnings (the Library's Doctor) also advise a blend flag: the Blend page's control for it.
DOCTOR_FIELDS = {**GENERATE_FIELDS, "--keep-norm": "“Keep the operands' norm” on the Blend page"}


def user_errors() -> tuple[type[BaseException], ...]:
    """USER_ERRORS plus the project's own family and PIL's guard against huge images, which is not an
    OSError (imported lazily: the core may still be loading)."""
    from PIL import Image

    from embeddings.errors import TokensmithError

    return (*USER_ERRORS, TokensmithError, Image.DecompressionBombError)


def error_text(exc: BaseException, *, fields: Mapping[str, str] | None = None) -> str:
    """`error_words` for st.error and the like: Markdown, but with nothing live that a file's words in the
    message could make (cards.inert: a link, an image, an HTML tag)."""
    from studio.app.cards import inert

    return inert(error_words(exc, fields=fields))


def error_words(exc: BaseException, *, fields: Mapping[str, str] | None = None) -> str:
    """One line for the user: KeyError's message without the quotes repr() adds, in the studio's words
    (plain text: `cards.literal` it, or use error_text).

    `fields` maps the CLI flags the engine's messages name to the page's fields ({"--steps": "Steps"}:
    "raise --steps" reads "raise Steps"); flags not in it stay as they are. A full or read-only disk that
    no engine message worded names the file and what to do (embeddings.files.write_failure)."""
    from PIL import Image

    from embeddings.errors import StrayNameError
    from embeddings.files import write_failure

    if isinstance(exc, StrayNameError):  # its advice is shell commands: the Library's buttons instead
        text = stray_text(exc.reason, exc.valid_name)
    elif isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, Image.DecompressionBombError):  # PIL's own words end in "DOS attack"
        text = f"the image is too large to open safely ({str(exc).split(', could be')[0]}): downscale it"
    elif (disk := write_failure(exc)) is not None:
        text = disk
    else:
        text = str(exc) or type(exc).__name__
    return studio_text(text, fields=fields)


def studio_text(text: str, *, fields: Mapping[str, str] | None = None) -> str:
    """A core message (an error, a doctor's verdict, an import warning) in the studio's words: what a page
    offers where the CLI names a command, plain words for the reprs of key and width lists, and `fields`
    as in `error_text`.

    "choose another name (or `tokensmith rename dog Dog`)" -> "choose another name";
    "keys ['clip_g', 'clip_l']" -> "keys clip_g, clip_l"."""
    for cli, studio in STUDIO_WORDS.items():
        text = text.replace(cli, studio)
    for pattern, replacement in STUDIO_PATTERNS:
        text = re.sub(pattern, replacement, text)
    text = REPR_LIST.sub(lambda m: f"{m['words']} {_unquoted(m['items'])}", text)
    text = REPR_DICT.sub(lambda m: f"{m['words']} {_unquoted(m['items']).replace(':', '')}", text)
    for flag, label in (fields or {}).items():
        text = re.sub(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", label, text)
    return text


def _unquoted(items: str) -> str:
    return items.replace("'", "")


def stray_text(reason: str, valid_name: str) -> str:
    """Why a file copied into the store is not an embedding name, and the Library's ways out (where the
    core's StrayNameError names shell commands)."""
    return f"{reason}; the Library can rename it to <{valid_name}> or move it to the trash"


def free_name(store: Any, stem: str) -> str:
    """A valid name for the stored file `stem` that no stored embedding holds (letter case aside):
    'EasyNegative (1)' -> 'EasyNegative-1', or 'EasyNegative-1-2' when <EasyNegative-1> is taken."""
    from embeddings.names import safe_name

    base = safe_name(stem)
    taken = {name.lower() for name in store.names()}
    name, count = base, 1
    while name.lower() in taken:
        count += 1
        name = f"{base[: 63 - len(str(count))]}-{count}"
    return name


def problem_text(store: Any, path: Path, reason: str, *, on_library_page: bool = False) -> str:
    """The warning (Markdown: the file's name a `code` span, the words `literal`) for a stored file that
    `store.list` skipped, in the studio's words: a file copied in under a name the rules refuse (the store
    says so before reading it) gets the Library's ways out, with a name that is free; an unreadable one the
    trash or a good copy (`cards.skipped_text`)."""
    from embeddings.names import name_refusal
    from studio.app.cards import code, literal, skipped_text

    refusal = name_refusal(path.stem)
    if refusal is not None:
        return f"skipped {code(path.name)}: {literal(stray_text(refusal, free_name(store, path.stem)))}"
    return skipped_text(path, studio_text(reason), on_library_page=on_library_page)


# --- home and model ---


def home() -> Path:
    """The tokensmith home the studio serves ($TOKENSMITH_HOME, set by `tokensmith ui --home`). Set but
    empty (the app started by hand with an unset variable), the page says so and stops."""
    try:
        return home_dir()
    except UsageError as exc:
        st.error(f"{exc}; or start the studio with `tokensmith ui --home DIR`")
        st.stop()
        raise  # st.stop() ends the script run; outside one, the error stands


def model_spec() -> str:
    """The model the pages use: the sidebar's choice, else ?model= from the URL, else the demo world."""
    if "model" not in st.session_state:
        st.session_state["model"] = st.query_params.get("model", DEFAULT_MODEL)
    return st.session_state["model"].strip() or DEFAULT_MODEL


def model_config(spec: str) -> str:
    """The configs that go with `spec` (the sidebar's second field, or ?model_config=): '' unless `spec` is
    a checkpoint file."""
    if "model_config" not in st.session_state:
        st.session_state["model_config"] = st.query_params.get("model_config", "")
    return st.session_state["model_config"].strip() if is_single_file(spec) else ""


def is_single_file(spec: str) -> bool:
    """A checkpoint file (.safetensors, .ckpt, ...), whose configs come from the hub or --model-config."""
    from trainers.models import SINGLE_FILE_SUFFIXES

    return Path(spec).suffix.lower() in SINGLE_FILE_SUFFIXES


def _keep_in_url(key: str, value: str, default: str) -> None:
    if value != default:
        st.query_params[key] = value
    elif key in st.query_params:
        del st.query_params[key]


def sidebar_ui() -> str:
    """The sidebar: which model the pages use (and, for a checkpoint file, its configs) and where the home
    is. Returns the model spec."""
    model_spec()  # seed the widgets' state from the URL before the widgets exist
    with st.sidebar:
        spec = st.text_input("Model", key="model", help=MODEL_HELP).strip() or DEFAULT_MODEL
        _keep_in_url("model", spec, DEFAULT_MODEL)
        if is_single_file(spec):
            model_config(spec)  # seed the widget's state from the URL before the widget exists
            config = st.text_input("Model configs", key="model_config", help=MODEL_CONFIG_HELP).strip()
            _keep_in_url("model_config", config, "")
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
    """The embedding store of the home (cheap: it reads headers only when asked). A page that waits long for
    the store's lock (another process writes: an import, or one suspended with Ctrl-Z) says on the page who
    holds it, not on the studio's terminal."""
    from embeddings import Store

    return Store.for_home(home(), on_wait=lambda line: st.warning(waiting_text(line), icon="⏳"))


def waiting_text(line: str) -> str:
    """The store's line about waiting for its lock, in the page's words: the page, not a command, goes on."""
    return line.replace(
        "this command goes on when it is done (Ctrl-C stops waiting)", "this page goes on when it is done"
    )


def generation_session(spec: str) -> Any:
    """A generation Session for `spec` (with the sidebar's configs for a checkpoint file), loaded once and
    shared by every page and browser tab."""
    return _generation_session(spec, model_config(spec))


@st.cache_resource(show_spinner="Loading the model (once per studio process)…", max_entries=2)
def _generation_session(spec: str, config: str) -> Any:
    from studio.generation import Session
    from trainers.models import load_model

    return Session(load_model(spec, config=config or None))


def loaded_model(spec: str) -> Any:
    """The LoadedModel of `spec` (its pipeline, family and encoders), for pages that need no sampling."""
    return generation_session(spec).model
