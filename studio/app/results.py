"""Generate's results as the page draws them: the images in one wrapping set (drawn again as each is made),
then once under them one image's labelled details, its PNG download (provenance inside), a .zip of them all,
and the provenance as JSON."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import streamlit as st
from PIL import Image

from studio.app.cards import literal
from studio.app.pictures import enlarged

ONE_RESULT_SIDE = 384  # one result is drawn at most this wide (a small one enlarged to it, pixels kept sharp)
RESULT_SIDE = 160  # several: each at most this wide, so a phone shows two a row and the desktop column three


def download_name(prov: dict) -> str:
    """'a-red-circle-s3.png': the prompt and the seed, as the CLI names its files."""
    return f"{prompt_slug(prov)}-s{prov.get('seed')}.png"


def prompt_slug(prov: dict) -> str:
    """'A red circle, on blue!' -> 'a-red-circle-on-blue' (the start of a file name)."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(prov.get("prompt", "")).lower()).strip("-")[:48].rstrip("-")
    return slug or "image"


def zipped(results: list) -> bytes:
    """Every result's PNG (provenance inside) in one .zip, each under its `download_name`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        for png, prov in results:
            archive.writestr(download_name(prov), png)
    return buffer.getvalue()


def images_ui(results: list, *, asked: int | None = None) -> None:
    """The images in one row that wraps (two a row on a phone), small ones enlarged with their pixels kept
    sharp; no widgets, so it is drawn again as each image is made. Their size follows how many were asked
    for (`asked`; default: as many as there are), so the first of four is not drawn large, then shrunk."""
    side = ONE_RESULT_SIDE if (asked or len(results)) == 1 else RESULT_SIDE
    pictures = [enlarged(Image.open(io.BytesIO(png)), at_most=side) for png, _prov in results]
    st.image(
        pictures, caption=[f"seed {prov.get('seed')}" for _png, prov in results],
        width=min(side, pictures[0].width), output_format="PNG",  # JPEG would smear the sharp pixels
    )  # fmt: skip


def results_ui(results: list) -> None:
    """The images, then once, full width under them: one image's details (the one chosen, of several), its
    PNG download and its provenance as JSON (in a column per image, that JSON ran a few characters a line)."""
    images_ui(results)
    chosen = 0
    if len(results) > 1:
        if st.session_state.get("gen_details_of") not in range(len(results)):
            st.session_state.pop("gen_details_of", None)  # fewer images than when it was chosen
        chosen = st.selectbox(
            "Details of", range(len(results)), key="gen_details_of",
            format_func=lambda i: f"image {i + 1}, seed {results[i][1].get('seed')}",
        )  # fmt: skip
    png, prov = results[chosen]
    c1, c2 = st.columns(2)
    with c1:
        st.download_button(
            "Download PNG",
            png,
            file_name=download_name(prov),
            mime="image/png",
            key="gen_dl",
            width="stretch",
        )
    if len(results) > 1:
        with c2:
            st.download_button(
                f"Download all {len(results)} (.zip)", zipped(results), file_name=f"{prompt_slug(prov)}.zip",
                mime="application/zip", key="gen_dl_all", width="stretch",
            )  # fmt: skip
    st.markdown("  \n".join(f"**{label}:** {literal(value)}" for label, value in details(prov).items()))
    with st.expander("Provenance (JSON, as the PNG carries it)"):
        st.json(prov)


def details(prov: dict) -> dict[str, str]:
    """The provenance fields people read, labelled: prompt, negative, seed, steps, scheduler, guidance, size,
    the embeddings used (each with the start of its sha256), and swaps, guides, an init image and partial
    fits where there were any. The rest (versions, the prompt as run) is in the JSON."""
    rows = {"Prompt": str(prov.get("prompt", ""))}
    if prov.get("negative"):
        rows["Negative prompt"] = str(prov["negative"])
    guidance = prov.get("guidance")
    rows |= {
        "Seed": str(prov.get("seed")),
        "Steps": str(prov.get("steps")),
        "Scheduler": str(prov.get("scheduler")),
        "Guidance": f"{guidance:g}" if isinstance(guidance, int | float) else str(guidance),
        "Size": f"{prov.get('width')}×{prov.get('height')}",
    }
    used = [e for e in prov.get("embeddings") or [] if isinstance(e, dict)]
    rows["Embeddings"] = ", ".join(f"<{e.get('name')}> ({str(e.get('sha256'))[:12]})" for e in used) or "none"
    if prov.get("partial"):
        rows["Partial fit"] = ", ".join(f"<{name}>" for name in prov["partial"])
    if prov.get("swaps"):
        rows["Swaps"] = ", ".join(f"{word}={target}" for word, target in dict(prov["swaps"]).items())
    if prov.get("guides"):
        rows["Loss guides"] = "; ".join(str(guide) for guide in prov["guides"])
    if isinstance(prov.get("init_image"), dict):
        rows["Init image"] = (
            f"{Path(str(prov['init_image'].get('path'))).name}, strength {prov.get('strength')}"
        )
    rows["Model"] = str(prov.get("model"))
    return rows
