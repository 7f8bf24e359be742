"""Train: upload images of a concept, start `tokensmith train` as a job, watch it learn, cancel or resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import streamlit as st

from studio.app import cards, context, formstate, uploads
from studio.app.formstate import UPLOAD_HELP
from studio.app.pictures import enlarged
from studio.app.trainjobs import REPLACE_LABEL, TRAIN_FIELDS, job_choice_ui, progress_ui
from studio.jobs import Job, JobRunner, new_job_id
from studio.trainrequest import TrainRequest


@st.cache_resource(show_spinner="Loading the trainer (once per studio process)…")
def train_defaults() -> dict:
    """The trainer's own defaults, shown in the form (so the UI never drifts from the CLI)."""
    from trainers.config import TrainConfig

    cfg = TrainConfig()
    return {
        "steps": cfg.steps,
        "learning_rate": cfg.learning_rate,
        "vectors": cfg.vectors,
        "save_every": cfg.save_every,
    }


# --- the form ---


FOLDER_HELP = (
    "Used instead of the uploads. A NAME.txt next to an image joins its prompts as a caption "
    "(PNG, JPEG and WebP are read)."
)
START_FROM_HELP = (
    "The vectors training starts from: a word, a phrase or a stored embedding as <stored-name>. Empty: the "
    "model family's default."
)
THUMBNAILS = 6  # uploads shown under the uploader (it lists every name)
THUMBNAIL_W = 96  # px: a glance at each upload, not a full-width picture on a phone


def images_ui() -> tuple[list[tuple[str, bytes]], str]:
    """Uploaded images as (name, bytes) pairs, and a folder path typed instead (one of them is used). The
    uploads' thumbnails come right under the uploader, unless a folder is typed (then it is used)."""
    files = st.file_uploader(
        "Images of the concept (3–10 views work best)",
        type=list(uploads.IMAGE_TYPES),
        accept_multiple_files=True,
        key="images",
        help=UPLOAD_HELP,
    )
    folder_key = formstate.kept("folder", "")
    pairs = [(f.name, f.getvalue()) for f in files or []]
    if pairs and not st.session_state[folder_key].strip():
        thumbnails_ui(pairs)
    folder = st.text_input(
        "…or a folder on this machine", key=folder_key, placeholder="/path/to/images", help=FOLDER_HELP
    ).strip()
    return pairs, folder


def thumbnails_ui(pairs: list[tuple[str, bytes]]) -> None:
    """The first uploads, small and without captions (names wrap in columns this narrow; the uploader lists
    them); a file that is not an image says so by name."""
    cols = st.columns(min(len(pairs), THUMBNAILS))
    for col, (name, data) in zip(cols, pairs[:THUMBNAILS], strict=False):
        try:
            picture = enlarged(uploads.thumbnail(data, side=THUMBNAIL_W), at_most=THUMBNAIL_W)  # sharp
            col.image(picture, width=picture.width, output_format="PNG")  # never stretched to a phone's width
        except OSError:
            col.warning(f"{name}: not an image")


def concept_ui(defaults: dict) -> dict:
    """The concept's name and how to learn it; returns plain values."""
    name = st.text_input(
        "Concept name (the prompt trigger is <name>)", key=formstate.kept("name", ""), placeholder="my-cat"
    ).strip()
    init = st.text_input(
        "Start from",
        key=formstate.kept("init", ""),
        placeholder="red circle or <stored-name>",
        help=START_FROM_HELP,
    ).strip()
    c1, c2, c3 = st.columns(3)
    # No maximums: Streamlit does not commit a value over one, so the job would run with the last value
    # committed. The trainer refuses Vectors its prompts have no room for, and says the model's limit.
    vectors = c1.number_input(
        "Vectors",
        min_value=0,
        key=formstate.kept("vectors", defaults["vectors"]),
        help="each costs a token of the prompt; 0: the model's default (2 on the demo world, 1 on SD), "
        "or an init embedding's own count",
    )
    steps = c2.number_input("Steps", min_value=1, key=formstate.kept("steps", defaults["steps"]))
    lr = c3.number_input(
        "Learning rate", 1e-5, 1.0, format="%.4f", key=formstate.kept("lr", defaults["learning_rate"])
    )
    kinds = ["an object", "a style"]
    kind = st.radio("It is", kinds, horizontal=True, key=formstate.kept("kind", kinds[0], options=kinds))
    with st.expander("More options"):
        save_every = st.number_input(
            "Preview + snapshot every N steps (0: only at the end)",
            min_value=0,
            key=formstate.kept("every", defaults["save_every"]),
        )
        early = st.toggle("Stop early when it has learned", key=formstate.kept("early", True))
        keep_best = st.toggle(
            "Store the snapshot whose previews scored best",
            key=formstate.kept("keep_best", True),
            help="scored by the demo judge or a CLIP model; without either, the last step is stored",
        )
        overwrite = st.toggle(REPLACE_LABEL, value=False, key="overwrite")
        checkpointing = st.toggle(
            TRAIN_FIELDS["--gradient-checkpointing"],
            key=formstate.kept("checkpointing", False),
            help="less GPU memory, slower (the UNet's activations are computed again, to the same numbers)",
        )
    return {
        "name": name,
        "init": init,
        "vectors": int(vectors),
        "steps": int(steps),
        "learning_rate": float(lr),
        "style": kind == "a style",
        "save_every": int(save_every),
        "early_stopping": early,
        "keep_best": keep_best,
        "overwrite": overwrite,
        "gradient_checkpointing": checkpointing,
    }


def start_job(
    runner: JobRunner,
    files: list[tuple[str, bytes]],
    folder: str,
    concept: dict,
    model: str,
    model_config: str = "",
) -> Job:
    """Check everything a user can get wrong, then start the job; raises with a message saying what to fix."""
    from embeddings import validate_name

    if not concept["name"]:
        raise ValueError("give the concept a name first: it becomes the prompt trigger <name>")
    validate_name(concept["name"])
    if not concept["overwrite"]:
        check_name_free(concept["name"])
    check_start_from(concept["init"], model, model_config)
    if folder:
        uploads.check_images(uploads.read_folder(folder))
    elif files:
        images = uploads.check_images(files)
    else:
        raise ValueError("add images of the concept first (drop them above, or type a folder path)")
    runner.refuse_while_running()  # before the uploads are copied: a refused start leaves no folder
    job_id = new_job_id(concept["name"])
    if folder:
        image_dir = Path(folder).expanduser().resolve()  # the trainer runs inside its run folder
    else:
        image_dir = uploads.save_images(images, runner.runs_dir / job_id / "images")
    extra = ["--save-every", str(concept["save_every"])]
    extra += [] if concept["early_stopping"] else ["--no-early-stopping"]
    extra += [] if concept.get("keep_best", True) else ["--keep", "last"]
    extra += ["--overwrite"] if concept["overwrite"] else []
    extra += ["--gradient-checkpointing"] if concept.get("gradient_checkpointing") else []
    request = TrainRequest(
        name=concept["name"],
        images=image_dir,
        init=concept["init"] or None,
        vectors=concept["vectors"],
        style=concept["style"],
        steps=concept["steps"],
        learning_rate=concept["learning_rate"],
        model=model,
        model_config=model_config or None,
        extra_args=tuple(extra),
    )
    try:
        return runner.start(request, job_id=job_id)
    except context.user_errors():
        if not folder:  # e.g. another tab started a job meanwhile: no orphan folder of copied uploads
            shutil.rmtree(runner.runs_dir / job_id, ignore_errors=True)
        raise


def check_name_free(name: str) -> None:
    """Refuse a name the store holds (a run would be refused at its end): an embedding in the Library, or
    a file of that name the Library cannot read (not in its gallery: its warning names it)."""
    from embeddings.errors import EmbeddingFormatError

    store = context.store()
    if not store.exists(name):
        return
    try:
        store.entry(name)
    except (EmbeddingFormatError, OSError):
        raise ValueError(
            f"the name '{name}' is held by a file the Library cannot read, so its gallery does not show it "
            "(the warning at the top of the Library page says why, and can move the file to the trash): "
            f"choose another name, or turn on “{REPLACE_LABEL}” under More options to replace that file"
        ) from None
    raise ValueError(f"{cards.name_taken_text(name, REPLACE_LABEL)} under More options")


def check_start_from(init: str, model: str, model_config: str = "") -> None:
    """Refuse, before a job starts, a “Start from” the trainer would refuse once launched: brackets around
    part of a phrase, or a <name> that is not stored, cannot be read, or was made for another model (its keys
    and widths against the model's files; a hub id's are known only once it loads, so the trainer checks)."""
    from trainers.config import ConfigError, TrainConfig
    from trainers.modelprep import check_init_fits, init_embedding_name

    try:
        cfg = TrainConfig(init=init, model=model, model_config=model_config)
    except ConfigError as exc:  # "init = 'a <cat> toy': ... write its name alone in brackets (<base>) ..."
        raise ValueError(str(exc).replace("init = ", "“Start from” ", 1)) from None
    name = init_embedding_name(init)
    if name is None:
        return
    store = context.store()
    if not store.exists(name):
        twin = store.case_twin(name)
        hint = f" (names are matched as written: did you mean <{twin}>?)" if twin else ""
        raise ValueError(
            f"“Start from” names <{name}>, which is not in the library{hint}: give a stored embedding's name "
            "(the Library lists them), a word or a phrase, or leave it empty"
        )
    try:
        check_init_fits(cfg, store)  # reads the stored file: a damaged one fails its checksum here
    except context.user_errors() as exc:
        raise ValueError(f"“Start from” <{name}> cannot start this run: {context.error_text(exc)}") from None


# --- the page ---

formstate.remember()  # the form's values outlive a visit to another page (the upload does not)
st.title("🎓 Train a concept")
runner = context.runner()
left, right = st.columns([2, 3], gap="large")
with left:
    st.subheader("New concept")
    files, folder = images_ui()
    concept = concept_ui(train_defaults())
    if st.button("Start training", type="primary", key="start"):
        try:
            spec = context.model_spec()
            job = start_job(runner, files, folder, concept, spec, context.model_config(spec))
            st.query_params["job"] = job.id
            st.rerun()
        except context.user_errors() as exc:
            st.error(context.error_text(exc, fields=TRAIN_FIELDS))
with right:
    st.subheader("Jobs")
    job_id = job_choice_ui(runner)
    if job_id:
        try:
            progress_ui(runner, job_id)
        except context.user_errors() as exc:
            st.error(context.error_text(exc, fields=TRAIN_FIELDS))
