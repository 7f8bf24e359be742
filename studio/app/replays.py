"""Generate's replay panel: re-make an image from the provenance inside a tokensmith PNG (one image of a
grid, variations sheet or trace strip too) and say whether it matches the upload."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import streamlit as st
from PIL import Image

from studio.app.formstate import UPLOAD_HELP
from studio.app.pictures import enlarged

SHOWN_SIDE = 384  # the uploaded and the replayed image side by side, each at most this wide


def replay_ui(session, store) -> None:
    """Re-make an image from the provenance inside a tokensmith PNG, and say whether it matches; the result
    stays (keyed by the upload) while the page reruns for other widgets."""
    from studio.generation import read_provenance, replay
    from studio.generation.sheets import cell_box, matches_original, sheet_cells_count

    upload = st.file_uploader(
        "A PNG written by tokensmith", type=["png"], key="gen_replay_file", help=UPLOAD_HELP
    )
    if upload is None:
        return
    with tempfile.TemporaryDirectory(prefix="tokensmith-replay-") as tmp:
        path = Path(tmp) / "image.png"
        path.write_bytes(upload.getvalue())
        label = repr(upload.name)  # errors name the user's file, not the temporary copy
        cell = None
        if sheet := sheet_cells_count(path, label=label):  # a grid, variations sheet or trace strip
            kind, count = sheet
            cell = 1  # a trace strip (or a one-image grid) holds one image: nothing to choose
            if count > 1:
                label_text = f"Image of this {kind} to replay (1 is the top left, row by row)"
                cell = int(st.number_input(label_text, 1, count, 1, key="gen_replay_cell"))
        prov = read_provenance(path, label=label, cell=cell)
        st.caption(f"prompt: {prov.get('prompt')!r} · seed {prov.get('seed')} · model {prov.get('model')}")
        if prov.get("model") not in (None, session.model.source):
            st.warning(f"made with model {prov.get('model')}; the studio uses {session.model.source}")
        if st.button("Replay", key="gen_replay"):
            with st.spinner("Replaying…"):
                result = replay(path, store=store, session=session, label=label, cell=cell)
            shown = Image.open(io.BytesIO(upload.getvalue()))
            if cell is not None and (box := cell_box(path, cell)) is not None:
                shown = Image.open(path).convert("RGB").crop(box)  # the cell as the sheet shows it
            same = matches_original(path, result.image, cell)
            st.session_state["gen_replayed"] = (
                (upload.file_id, cell),
                shown,
                result.image,
                replay_verdict(same),
            )
    replayed = st.session_state.get("gen_replayed")
    if replayed is None or replayed[0] != (upload.file_id, cell):
        return
    _key, shown, image, (same, text) = replayed
    c1, c2 = st.columns(2)
    caption = "uploaded" if cell is None else f"uploaded, image {cell}"
    # a small image enlarged with its pixels sharp (PNG: JPEG would smear them), as the results above are
    c1.image(enlarged(shown, at_most=SHOWN_SIDE), caption=caption, output_format="PNG")
    c2.image(enlarged(image, at_most=SHOWN_SIDE), caption="replayed", output_format="PNG")
    (st.success if same else st.warning)(text)


def replay_verdict(same: bool | None) -> tuple[bool, str]:
    """Whether a replay matched what was uploaded (`matches_original`), and the sentence that says so."""
    if same is None:
        return True, "Replayed the image this trace strip traced (the strip holds no copy of it to compare)."
    if same:
        return True, "Pixel-identical to the uploaded image."
    return (
        False,
        "Replayed, but not pixel-identical: another machine, library version or torch thread count "
        "(OMP_NUM_THREADS)?",
    )
