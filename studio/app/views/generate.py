"""Generate: prompts with <name> triggers, swaps, negative prompts, img2img and loss guidance; results carry
their provenance and download as PNG; any tokensmith PNG can be replayed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import streamlit as st
from PIL import Image

from studio.app import context, formstate
from studio.app.blending import fitting_first
from studio.app.formstate import UPLOAD_HELP
from studio.app.pictures import enlarged
from studio.app.replays import replay_ui
from studio.app.results import images_ui, results_ui

GUIDE_HELP = (
    "One per line: `color=green`, `color=#00ff00`, `brightness=0.8`, `contrast=0.3`, `match=/path/to.png`, "
    "`module=package.module:function`; add `,scale=0.8` (0–1: the share of the loss removed per step) "
    "or `,every=2`."
)
MIN_STRENGTH = 0.05  # strength 0 would re-run no step at all
STRETCH_NOTED = 0.05  # an init image whose aspect ratio is changed by more than this is said to be stretched
PREVIEW_SIDE = 320  # the init image's preview is kept this small: a 24-megapixel photo would redraw slowly
INIT_SHOWN = 160  # and drawn this wide
# The engine's messages name the CLI's flags; on this page they name the fields (context.error_text).
FIELDS = {
    "--steps": "Steps",
    "--guidance": "Guidance",
    "--seed": "Seed",
    "--num-images": "Images",
    "--strength": "Strength",
    "--partial": "the Partial fit box",
    "--width": "Width",
    "--height": "Height",
    "--guide": "Loss guides",
}


# --- widgets ---


def insert_name(name_key: str) -> None:
    """Append the chosen library trigger to the prompt (a widget callback, before the prompt box redraws)."""
    name = st.session_state.get(name_key)
    if name:
        prompt = st.session_state.get("gen_prompt", "").rstrip()
        st.session_state["gen_prompt"] = f"{prompt} <{name}>".strip()


def prompt_ui(names: list[str], misfits: set[str]) -> tuple[str, str]:
    """Prompt and negative prompt; library names can be inserted as <name>. `names` come those made for this
    model first, so the list starts on one that fits; `misfits`, made for another model, are marked: using
    them is an error."""
    st.text_area(
        "Prompt", key=formstate.kept("gen_prompt", ""), height=80,
        placeholder="a <my-cat> on a blue background, (red:1.2) ball",
    )  # fmt: skip
    if names:  # a row of its own: beside the button, "name (not for this model)" was cut
        st.selectbox(
            "Library", names, key=formstate.kept("gen_insert_name", names[0], options=names),
            format_func=lambda name: f"{name} (not for this model)" if name in misfits else name,
        )  # fmt: skip
        st.button("Insert", key="gen_insert", on_click=insert_name, args=("gen_insert_name",))
    negative = st.text_input(
        "Negative prompt", key=formstate.kept("gen_negative", ""), placeholder="blurry, <bad-hands>"
    )
    return st.session_state.get("gen_prompt", "").strip(), negative.strip()


def library_names(entries: list) -> tuple[list[str], set[str]]:
    """The listed names for the Insert list, those made for this model first (as Blend orders its operands,
    `blending.fitting_first`), and the names of the others, made for another family (from the files'
    headers). While the model does not load (the results column says why): the names as listed, none
    marked."""
    try:
        widths = context.generation_session(context.model_spec()).model.widths
    except context.user_errors():
        return [entry.name for entry in entries], set()
    return fitting_first(entries, widths), {entry.name for entry in entries if entry.widths != widths}


def settings_ui(schedulers: list[str]) -> dict:
    """Seed, steps, guidance, scheduler, size and count. Width and Height go as far as the CLI's
    --width/--height (trainers.config.MAX_RESOLUTION); empty, they are the model's native size."""
    from trainers.config import MAX_RESOLUTION

    c1, c2 = st.columns(2)
    seed = c1.number_input("Seed", 0, 2**31 - 1, key=formstate.kept("gen_seed", 0))
    steps = c2.slider("Steps", 1, 100, key=formstate.kept("gen_steps", 20))
    c3, c4 = st.columns(2)
    guidance = c3.number_input(
        "Guidance", 0.0, 30.0, None, 0.5, key=formstate.kept("gen_guidance", None), placeholder="default"
    )
    scheduler = c4.selectbox("Scheduler", schedulers, key=formstate.kept("gen_scheduler", schedulers[0]))
    c5, c6, c7 = st.columns(3)
    width = c5.number_input(
        "Width", 8, MAX_RESOLUTION, None, 8, key=formstate.kept("gen_width", None), placeholder="native"
    )
    height = c6.number_input(
        "Height", 8, MAX_RESOLUTION, None, 8, key=formstate.kept("gen_height", None), placeholder="native"
    )
    count = c7.number_input("Images", 1, 8, key=formstate.kept("gen_count", 1))
    return {
        "seed": int(seed),
        "steps": int(steps),
        "guidance": guidance,
        "scheduler": scheduler,
        "width": int(width) if width else None,
        "height": int(height) if height else None,
        "num_images": int(count),
    }


def swaps_ui() -> dict[str, str] | None:
    """'puppy=<my-dog>, ball=<red-ball>': words that stand for embeddings without editing the prompt.

    None (with the error under the field) while a swap is half-typed or malformed."""
    from studio.generation import PromptError, parse_swap

    text = st.text_input(
        "Swaps", key=formstate.kept("gen_swaps", ""), placeholder="puppy=<my-dog>, ball=<red-ball>"
    )
    swaps = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            word, target = parse_swap(part)
        except PromptError:
            st.error(
                f"Swap {part!r} is not WORD=<name> (one word, then an embedding or a word): "
                "e.g. puppy=<my-dog>, ball=<red-ball>"
            )
            return None
        swaps[word] = target
    return swaps


def init_ui(size: tuple[int, int] | None) -> tuple[Path | None, float] | None:
    """An optional init image (img2img) and how far from it to go; None (with the error shown under the
    uploader) when the upload is not a readable image. `size` is what the image will be generated at (None
    while unknown), to say when the init image is stretched to it."""
    upload = st.file_uploader(
        "Init image (optional)", type=["png", "jpg", "jpeg", "webp"], key="gen_init", help=UPLOAD_HELP
    )
    strength = st.slider(
        "Strength (low keeps the init image, 1 ignores it)", MIN_STRENGTH, 1.0, step=0.05,
        key=formstate.kept("gen_str", 0.6),
    )  # fmt: skip
    if upload is None:
        return None, strength
    kept = kept_upload(upload)
    if isinstance(kept, str):
        st.error(kept)
        return None
    path, preview, (width, height) = kept
    shown = enlarged(preview, at_most=INIT_SHOWN)
    st.image(shown, caption=f"init image, {width}×{height}", width=min(INIT_SHOWN, shown.width))
    if size is not None and abs(width / height - size[0] / size[1]) > STRETCH_NOTED * size[0] / size[1]:
        st.caption(
            f"It is stretched to {size[0]}×{size[1]}, so its shape changes: set Width and Height in its "
            f"proportion ({width}:{height}) to keep it."
        )
    return path, strength


def kept_upload(upload) -> tuple[Path, object, tuple[int, int]] | str:
    """The uploaded init image read once per upload (not at every rerun of the page: a large photo takes a
    second to decode): where it is kept, a small preview and its size; or the message saying why it cannot
    be used."""
    from trainers.pictures import PictureError, flatten_alpha, read_picture

    cached = st.session_state.get("gen_init_kept")
    if cached is None or cached[0] != upload.file_id:
        try:  # transparent parts on the training gray, as the CLI reads an init image
            image = flatten_alpha(
                read_picture(upload.getvalue(), name=upload.name, role="init image", alpha=True)
            )
        except PictureError as exc:
            cached = (upload.file_id, str(exc))
        else:
            preview = image.copy()
            preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
            cached = (upload.file_id, (keep_init_image(image), preview, image.size))
        st.session_state["gen_init_kept"] = cached
    return cached[1]


def keep_init_image(image: Image.Image) -> Path:
    """Keep an uploaded init image under HOME/studio/init-images/ (named by its pixels, as it was read:
    upright, 8-bit, sRGB), so the provenance of what it makes points to a file that still exists and the image
    can be replayed later.

    The file holds those pixels and no colour profile, so the init image reader reads back exactly them.
    A file of that name kept by an earlier studio may carry the upload's profile (its pixels read through
    it again): it stays as it is, for the images made from it, and these pixels are kept beside it."""
    from embeddings.files import atomic_write
    from studio.generation.img2img import InitImageError, image_sha256, load_init_image

    folder = context.home() / "studio" / "init-images"
    folder.mkdir(parents=True, exist_ok=True)
    digest = image_sha256(image)
    plain = image.copy()
    plain.info.pop("icc_profile", None)  # read through it already (trainers.pictures), or unreadable
    number = 0
    while True:
        path = folder / (f"{digest[:16]}.png" if number == 0 else f"{digest[:16]}-{number}.png")
        if not path.exists():  # completely or not at all: a failed write (a full disk) leaves no temp file
            atomic_write(path, lambda tmp: plain.save(tmp, format="PNG"))
            return path
        try:
            if load_init_image(path, image.size)[1] == digest:  # as the session will read it
                return path
        except InitImageError:  # a damaged file: keep the upload beside it
            pass
        number += 1


def native_size(settings: dict) -> tuple[int, int] | None:
    """The size the next image is made at: the fields, else the model's own (None when the model does not
    load; the results column says why)."""
    try:
        native = context.generation_session(context.model_spec()).model.resolution
    except context.user_errors():
        return None
    return settings["width"] or native, settings["height"] or native


def guides_ui() -> tuple[str, ...]:
    """Loss-guidance specs, one per line."""
    text = st.text_area(
        "Loss guides",
        key=formstate.kept("gen_guides", ""),
        height=68,
        placeholder="color=green",
        help=GUIDE_HELP,
    )
    return tuple(line.strip() for line in text.splitlines() if line.strip())


# --- actions ---


def generate(
    session, store, prompt: str, negative: str, settings: dict, swaps, init, strength, guides, partial=False
) -> Iterator[tuple[bytes, dict]]:
    """Run the engine with a progress bar, yielding (png bytes with provenance, provenance) as each image is
    sampled (Session.each_image), so an error at a later image (out of memory, a guide failing) leaves the
    earlier ones with the caller.

    `partial` lets an embedding that fits only one of the model's encoders in (generate --partial): an SD 1.x
    embedding goes into SDXL's clip_l alone. The session is shared by every tab: it is set for this request
    only."""
    from studio.generation import GenerateRequest, check_swaps
    from studio.generation.provenance import png_bytes

    if not prompt:
        raise ValueError("write a prompt first (or pick a library embedding under the box and press Insert)")
    request = GenerateRequest(
        prompt=prompt,
        negative=negative,
        swaps=swaps,
        init_image=init,
        strength=strength,
        guides=guides,
        **settings,
    )
    check_swaps([request])
    slot = st.empty()  # the bar appears at the first step: a request refused before sampling shows no bar

    def on_step(info) -> None:
        done = info.image_index * info.total_steps + info.step
        total = info.num_images * info.total_steps
        slot.progress(done / total, text=step_text(info))

    asked, session.encoder.partial = session.encoder.partial, partial
    try:
        for result in session.each_image(request, store=store, on_step=on_step):
            yield png_bytes(result.image, result.provenance), result.provenance
    finally:
        session.encoder.partial = asked
        slot.empty()  # also after an error part-way (a guide failing at step k)


def step_text(info) -> str:
    """The progress bar's words: 'image 2/4 · step 15/20' (a step is read against its total)."""
    return f"image {info.image_index + 1}/{info.num_images} · step {info.step}/{info.total_steps}"


def failure_text(exc: BaseException, made: list, settings: dict) -> str:
    """The error in the page's words; after some of the images were made, which and how to make the rest,
    as `tokensmith generate` says it: '… (1 of 3 images were made, shown below: seed 0; Seed 1, Images 2
    makes the rest)'."""
    text = context.error_text(exc, fields=FIELDS)
    if not made:
        return text
    done, total = len(made), settings["num_images"]
    seeds = ", ".join(str(prov.get("seed")) for _png, prov in made)
    rest = f"Seed {settings['seed'] + done}, Images {total - done} makes the rest"
    return f"{text} ({done} of {total} images were made, shown below: seed{'s' * (done > 1)} {seeds}; {rest})"


# --- the page ---


def generate_ui(store, inputs: dict) -> None:
    """The results column: run the engine when asked (an error shows here and keeps the earlier results)."""
    if inputs["clicked"]:
        problems = [label for label in ("swaps", "init image") if inputs[label] is None]
        if problems:
            st.error(f"Fix the {' and the '.join(problems)} first (see the message under the field).")
        else:
            init, strength = inputs["init image"]
            made: list = []
            st.session_state.pop("gen_details_of", None)  # a new set: its details start at its first image
            shown = st.empty()  # above the progress bar: each image appears as it is made
            try:
                session = context.generation_session(context.model_spec())
                for result in generate(
                    session, store, inputs["prompt"], inputs["negative"], inputs["settings"],
                    inputs["swaps"], init, strength, inputs["guides"], inputs["partial"],
                ):  # fmt: skip
                    made.append(result)
                    st.session_state["gen_results"] = made  # kept as it comes: a later error leaves it
                    with shown.container():
                        images_ui(made, asked=inputs["settings"]["num_images"])
            except context.user_errors() as exc:
                st.error(failure_text(exc, made, inputs["settings"]))
                if not made and st.session_state.get("gen_results"):  # what stays below is not this prompt's
                    earlier = st.session_state["gen_results"][0][1].get("prompt", "")
                    st.caption(f"Below: the previous result, of {earlier!r}.")
            finally:
                shown.empty()  # drawn once more below, with the details and downloads
    if st.session_state.get("gen_results"):
        results_ui(st.session_state["gen_results"])
    else:
        st.info("Results appear here as they are made, with their provenance and PNG downloads.")


formstate.remember()  # first: another page may be opened before this run reaches the widgets
st.title("🎨 Generate")
try:
    from studio.generation import SCHEDULERS

    store = context.store()
    entries = store.list()  # what the Library lists: a file it skips cannot be used in a prompt either
except context.user_errors() as exc:
    st.error(context.error_text(exc))
    st.stop()
left, right = st.columns([2, 3], gap="large")
with left:
    inputs = {}
    inputs["prompt"], inputs["negative"] = prompt_ui(*library_names(entries))
    inputs["settings"] = settings_ui(list(SCHEDULERS))
    inputs["swaps"] = swaps_ui()
    inputs["partial"] = st.checkbox(
        "Partial fit",
        key=formstate.kept("gen_partial", False),
        help="Let in an embedding made for one of this model's encoders only: an SD 1.x embedding on SDXL "
        "goes into clip_l (clip_g gets zero vectors), an SDXL embedding's clip_l half into SD 1.x. Expect a "
        "weaker effect; the image's provenance records it and a replay repeats it.",
    )
    with st.expander("Image guidance and loss guidance"):
        inputs["init image"] = init_ui(native_size(inputs["settings"]))
        inputs["guides"] = guides_ui()
    inputs["clicked"] = st.button("Generate", type="primary", key="gen_go")
with right:
    generate_ui(store, inputs)
with st.expander("Replay an image"):
    try:
        replay_ui(context.generation_session(context.model_spec()), store)
    except context.user_errors() as exc:
        st.error(context.error_text(exc, fields=FIELDS))
