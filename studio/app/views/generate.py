"""Generate: prompts with <name> triggers, swaps, negative prompts, img2img and loss guidance; results carry
their provenance and download as PNG; any tokensmith PNG can be replayed."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from studio.app import context

GUIDE_HELP = (
    "One per line: `color=green`, `color=#00ff00`, `brightness=0.8`, `contrast=0.3`, `match=/path/to.png`, "
    "`module=package.module:function`; add `,scale=0.8` (0–1: the share of the loss removed per step) "
    "or `,every=2`."
)
MIN_STRENGTH = 0.05  # strength 0 would re-run no step at all


# --- widgets ---


def insert_name(name_key: str) -> None:
    """Append the chosen library trigger to the prompt (a widget callback, before the prompt box redraws)."""
    name = st.session_state.get(name_key)
    if name:
        prompt = st.session_state.get("gen_prompt", "").rstrip()
        st.session_state["gen_prompt"] = f"{prompt} <{name}>".strip()


def prompt_ui(names: list[str]) -> tuple[str, str]:
    """Prompt and negative prompt; library names can be inserted as <name>."""
    st.text_area(
        "Prompt", key="gen_prompt", height=80, placeholder="a <my-cat> on a blue background, (red:1.2) ball"
    )
    if names:
        c1, c2 = st.columns([2, 1], vertical_alignment="bottom")
        c1.selectbox("Library", names, key="gen_insert_name")
        c2.button(
            "Insert", key="gen_insert", on_click=insert_name, args=("gen_insert_name",), width="stretch"
        )
    negative = st.text_input("Negative prompt", key="gen_negative", placeholder="blurry, <bad-hands>")
    return st.session_state.get("gen_prompt", "").strip(), negative.strip()


def settings_ui(schedulers: list[str]) -> dict:
    """Seed, steps, guidance, scheduler, size and count."""
    c1, c2 = st.columns(2)
    seed = c1.number_input("Seed", 0, 2**31 - 1, 0, key="gen_seed")
    steps = c2.slider("Steps", 1, 100, 20, key="gen_steps")
    c3, c4 = st.columns(2)
    guidance = c3.number_input(
        "Guidance", 0.0, 30.0, None, 0.5, key="gen_guidance", placeholder="model default"
    )
    scheduler = c4.selectbox("Scheduler", schedulers, key="gen_scheduler")
    c5, c6, c7 = st.columns(3)
    width = c5.number_input("Width", 8, 2048, None, 8, key="gen_width", placeholder="model's native")
    height = c6.number_input("Height", 8, 2048, None, 8, key="gen_height", placeholder="model's native")
    count = c7.number_input("Images", 1, 8, 1, key="gen_count")
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

    text = st.text_input("Swaps", key="gen_swaps", placeholder="puppy=<my-dog>, ball=<red-ball>")
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


def init_ui() -> tuple[Path | None, float] | None:
    """An optional init image (img2img) and how far from it to go; None (with the error shown under the
    uploader) when the upload is not a readable image."""
    upload = st.file_uploader("Init image (optional)", type=["png", "jpg", "jpeg", "webp"], key="gen_init")
    strength = st.slider(
        "Strength (low keeps the init image, 1 ignores it)", MIN_STRENGTH, 1.0, 0.6, 0.05, key="gen_str"
    )
    if upload is None:
        return None, strength
    try:
        image = Image.open(io.BytesIO(upload.getvalue())).convert("RGB")
    except OSError as exc:
        reason = str(exc).split(" <_io.")[0]  # PIL names the in-memory buffer: not the user's file
        st.error(f"'{upload.name}' is not a readable image ({reason}): upload a PNG, JPEG or WebP")
        return None
    st.image(image, caption="init image", width=160)
    return keep_init_image(upload.getvalue(), image), strength


def keep_init_image(data: bytes, image: Image.Image) -> Path:
    """Keep an uploaded init image under HOME/studio/init-images/ (named by content), so the provenance of
    what it makes points to a file that still exists and the image can be replayed later."""
    import hashlib

    folder = context.home() / "studio" / "init-images"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()[:16]}.png"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        image.save(tmp, format="PNG")
        tmp.replace(path)
    return path


def guides_ui() -> tuple[str, ...]:
    """Loss-guidance specs, one per line."""
    text = st.text_area(
        "Loss guides", key="gen_guides", height=68, placeholder="color=green", help=GUIDE_HELP
    )
    return tuple(line.strip() for line in text.splitlines() if line.strip())


# --- actions ---


def generate(
    session, store, prompt: str, negative: str, settings: dict, swaps, init, strength, guides
) -> list:
    """Run the engine with a progress bar; returns [(png bytes with provenance, provenance), ...]."""
    from studio.generation import GenerateRequest, check_swaps
    from studio.generation.provenance import png_bytes

    if not prompt:
        raise ValueError("write a prompt first (insert a library embedding with the button below the box)")
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
    bar = st.progress(0.0, text="sampling…")

    def on_step(info) -> None:
        done = info.image_index * info.total_steps + info.step
        total = info.num_images * info.total_steps
        bar.progress(done / total, text=f"image {info.image_index + 1}/{info.num_images} · step {info.step}")

    results = session.generate(request, store=store, on_step=on_step)
    bar.empty()
    return [(png_bytes(r.image, r.provenance), r.provenance) for r in results]


def results_ui(results: list) -> None:
    """Each image with its provenance and a PNG download."""
    cols = st.columns(min(len(results), 4))
    for i, (png, prov) in enumerate(results):
        with cols[i % len(cols)]:
            st.image(png, caption=f"seed {prov.get('seed')}", width="stretch")
            st.download_button(
                "Download PNG", png, file_name=f"tokensmith-seed{prov.get('seed')}.png", mime="image/png",
                key=f"gen_dl_{i}",
            )  # fmt: skip
            with st.expander("Provenance"):
                st.json(prov)


def replay_ui(session, store) -> None:
    """Re-make an image from the provenance inside a tokensmith PNG, and say whether it matches."""
    from studio.generation import read_provenance, replay

    upload = st.file_uploader("A PNG written by tokensmith", type=["png"], key="gen_replay_file")
    if upload is None:
        return
    with tempfile.TemporaryDirectory(prefix="tokensmith-replay-") as tmp:
        path = Path(tmp) / "image.png"
        path.write_bytes(upload.getvalue())
        label = repr(upload.name)  # errors name the user's file, not the temporary copy
        prov = read_provenance(path, label=label)
        st.caption(f"prompt: {prov.get('prompt')!r} · seed {prov.get('seed')} · model {prov.get('model')}")
        if prov.get("model") not in (None, session.model.source):
            st.warning(f"made with model {prov.get('model')}; the studio uses {session.model.source}")
        if not st.button("Replay", key="gen_replay"):
            return
        with st.spinner("Replaying…"):
            result = replay(path, store=store, session=session, label=label)
        original = np.asarray(Image.open(path).convert("RGB"))
    again = np.asarray(result.image.convert("RGB"))
    same = original.shape == again.shape and np.array_equal(original, again)
    c1, c2 = st.columns(2)
    c1.image(upload.getvalue(), caption="uploaded", width="stretch")
    c2.image(result.image, caption="replayed", width="stretch")
    if same:
        st.success("Pixel-identical to the uploaded image.")
    else:
        diff = (
            np.abs(original.astype(int) - again.astype(int)).max()
            if original.shape == again.shape
            else "size"
        )
        st.warning(f"Replayed, but not pixel-identical (max difference {diff}): another machine or version?")


# --- the page ---


def generate_ui(store, inputs: dict) -> None:
    """The results column: run the engine when asked (an error shows here and keeps the earlier results)."""
    if inputs["clicked"]:
        problems = [label for label in ("swaps", "init image") if inputs[label] is None]
        if problems:
            st.error(f"Fix the {' and the '.join(problems)} first (see the message under the field).")
        else:
            init, strength = inputs["init image"]
            try:
                session = context.generation_session(context.model_spec())
                st.session_state["gen_results"] = generate(
                    session, store, inputs["prompt"], inputs["negative"], inputs["settings"],
                    inputs["swaps"], init, strength, inputs["guides"],
                )  # fmt: skip
            except context.user_errors() as exc:
                st.error(context.error_text(exc))
    if st.session_state.get("gen_results"):
        results_ui(st.session_state["gen_results"])
    else:
        st.info("Results appear here, each with its provenance and a PNG download.")


st.title("🎨 Generate")
try:
    from studio.generation import SCHEDULERS

    store = context.store()
    names = store.names()
except context.user_errors() as exc:
    st.error(context.error_text(exc))
    st.stop()
left, right = st.columns([2, 3], gap="large")
with left:
    inputs = {}
    inputs["prompt"], inputs["negative"] = prompt_ui(names)
    inputs["settings"] = settings_ui(list(SCHEDULERS))
    inputs["swaps"] = swaps_ui()
    with st.expander("Image guidance and loss guidance"):
        inputs["init image"] = init_ui()
        inputs["guides"] = guides_ui()
    inputs["clicked"] = st.button("Generate", type="primary", key="gen_go")
with right:
    generate_ui(store, inputs)
with st.expander("Replay an image"):
    try:
        replay_ui(context.generation_session(context.model_spec()), store)
    except context.user_errors() as exc:
        st.error(context.error_text(exc))
