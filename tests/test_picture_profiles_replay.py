"""Colour profiles and replay: images made from a profile-tagged init or match image before tokensmith applied
profiles (init reader 2, match records without a reader) replay from the pixels they were made from; new ones
are made from the pixels as a viewer shows them, and the studio keeps those pixels with no profile."""

import json
import struct
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from studio.generation import GenerateRequest, ReplayError, read_provenance, replay, save_png
from studio.generation.guidance import MATCH_READER
from studio.generation.img2img import INIT_READER, image_sha256, load_init_image
from studio.generation.provenance import CHUNK
from studio.generation.replaying import changed_files
from trainers.pictures import flatten_alpha, read_picture

RED, BLUE = (200, 0, 0), (30, 60, 220)


def _swapped_profile() -> bytes:
    """A valid RGB ICC profile: LittleCMS's sRGB with its red and blue primaries swapped, so applying it
    turns red pixels blue (an unmistakable stand-in for a phone's Display P3 or a camera's Adobe RGB)."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack(">I", data[128:132])[0]
    entries = {bytes(data[132 + 12 * i : 136 + 12 * i]): 132 + 12 * i for i in range(count)}
    red, blue = entries[b"rXYZ"], entries[b"bXYZ"]
    data[red + 4 : red + 12], data[blue + 4 : blue + 12] = (
        data[blue + 4 : blue + 12],
        data[red + 4 : red + 12],
    )
    data[84:100] = bytes(16)  # the profile ID, computed over the old bytes: none
    return bytes(data)


def _pixels() -> Image.Image:
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)  # (H, W, 3)
    pixels[...] = RED
    pixels[8:24, 8:24] = BLUE
    return Image.fromarray(pixels)


@pytest.fixture
def pictures(tmp_path):
    """tagged.png: stored pixels with the swapped profile; plain.png: the same stored pixels, no profile;
    shown.png: the pixels a viewer shows for tagged.png, no profile."""
    _pixels().save(tmp_path / "tagged.png", icc_profile=_swapped_profile())
    _pixels().save(tmp_path / "plain.png")
    read_picture(tmp_path / "tagged.png").save(tmp_path / "shown.png")
    return tmp_path


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a.image), np.asarray(b.image))


def _with_provenance(path, result, prov):
    """`result`'s pixels with the provenance `prov` (as an older tokensmith would have written it)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(CHUNK, json.dumps(prov))
    result.image.save(path, pnginfo=info)
    return path


# --- the reader ---


def test_read_picture_applies_a_profile_unless_asked_to_keep_the_stored_pixels(pictures):
    shown = read_picture(pictures / "tagged.png")
    assert shown.getpixel((0, 0))[2] > 150 and "icc_profile" not in shown.info  # red shown blue, sRGB now
    stored = read_picture(pictures / "tagged.png", profile=False)
    assert np.array_equal(np.asarray(stored), np.asarray(_pixels()))


# --- init images ---


def test_init_reader_2_reads_a_profile_tagged_file_as_stored_and_reader_3_as_shown(pictures):
    as_stored = image_sha256(_pixels())  # what tokensmith recorded for it before profiles were applied
    assert load_init_image(pictures / "tagged.png", (32, 32), reader=2)[1] == as_stored
    assert INIT_READER == 3
    assert load_init_image(pictures / "tagged.png", (32, 32))[1] == image_sha256(
        Image.open(pictures / "shown.png")
    )


def test_init_reader_2_keeps_a_palettes_transparent_colour_as_stored(tmp_path):
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([*RED, *BLUE] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.save(tmp_path / "keyed.png", transparency=1)
    assert load_init_image(tmp_path / "keyed.png", (4, 4), reader=2)[0].getpixel((0, 0)) == BLUE  # as before
    assert load_init_image(tmp_path / "keyed.png", (4, 4))[0].getpixel((0, 0)) == (128, 128, 128)  # on gray


def test_an_img2img_image_made_from_a_profile_tagged_file_by_reader_2_replays(tiny_session, pictures):
    # tokensmith before profiles read tagged.png as its stored pixels: plain.png holds them, untagged
    request = GenerateRequest("a red circle", init_image=pictures / "plain.png", strength=0.6, steps=4)
    [old] = tiny_session.generate(replace(request, init_reader=2))
    prov = json.loads(json.dumps(old.provenance))
    prov["init_image"]["path"] = str(pictures / "tagged.png")  # as that tokensmith recorded it
    path = _with_provenance(pictures / "old_img2img.png", old, prov)
    again = replay(path, session=tiny_session)  # was: "init image ... has changed since"
    assert _same(again, old)


def test_a_new_img2img_image_from_a_profile_tagged_file_is_made_from_the_pixels_shown(tiny_session, pictures):
    request = GenerateRequest("a red circle", init_image=pictures / "tagged.png", strength=0.6, steps=4)
    [new] = tiny_session.generate(request)
    [shown] = tiny_session.generate(replace(request, init_image=pictures / "shown.png"))
    [stored] = tiny_session.generate(replace(request, init_image=pictures / "plain.png"))
    assert new.provenance["init_image"]["reader"] == INIT_READER
    assert new.provenance["init_image"]["sha256"] == shown.provenance["init_image"]["sha256"]
    assert _same(new, shown) and not _same(new, stored)
    again = replay(save_png(new, pictures / "new_img2img.png"), session=tiny_session)
    assert _same(again, new)


# --- match= guides ---


def test_a_match_image_made_from_a_profile_tagged_file_without_a_reader_replays(tiny_session, pictures):
    # before profiles, match= read tagged.png as its stored pixels (plain.png) and recorded no reader
    [old] = tiny_session.generate(
        GenerateRequest("a circle", steps=3, guides=(f"match={pictures / 'plain.png'},scale=0.3",))
    )
    prov = json.loads(json.dumps(old.provenance))
    prov["guides"] = [f"match={pictures / 'tagged.png'},scale=0.3"]
    [record] = prov["guide_files"]
    record["guide"], record["path"] = prov["guides"][0], str(pictures / "tagged.png")
    record.pop("reader", None)  # no reader recorded then
    path = _with_provenance(pictures / "old_match.png", old, prov)
    again = replay(path, session=tiny_session)  # was: "match image ... has changed since"
    assert _same(again, old)
    assert again.provenance["guide_files"][0]["reader"] == 1  # the replay says how it read the image


def test_a_new_match_image_is_read_as_shown_and_its_reader_recorded(tiny_session, pictures):
    [new] = tiny_session.generate(
        GenerateRequest("a circle", steps=3, guides=(f"match={pictures / 'tagged.png'}",))
    )
    [shown] = tiny_session.generate(
        GenerateRequest("a circle", steps=3, guides=(f"match={pictures / 'shown.png'}",))
    )
    [record] = new.provenance["guide_files"]
    assert record["reader"] == MATCH_READER == 2
    assert record["sha256"] == shown.provenance["guide_files"][0]["sha256"] and _same(new, shown)
    path = save_png(new, pictures / "new_match.png")
    assert _same(replay(path, session=tiny_session), new)
    assert read_provenance(path)["guide_files"][0]["reader"] == 2


def test_a_match_record_from_a_newer_reader_is_refused_in_words(pictures):
    record = {
        "guide": "match=x",
        "kind": "match",
        "path": str(pictures / "plain.png"),
        "sha256": "0",
        "reader": 9,
    }
    [problem] = changed_files([record])
    assert "read by a newer tokensmith (reader 9)" in problem and "update tokensmith" in problem


# --- the studio's kept init images ---


def test_the_studio_keeps_an_upload_as_sRGB_pixels_without_its_profile(pictures):
    from studio.app.views.generate import keep_init_image

    data = (pictures / "tagged.png").read_bytes()
    image = flatten_alpha(read_picture(data, name="tagged.png", role="init image", alpha=True))
    kept = keep_init_image(image)
    with Image.open(kept) as opened:
        assert "icc_profile" not in opened.info
    assert load_init_image(kept, image.size)[1] == image_sha256(image)  # read back as kept, not twice through
    assert keep_init_image(image) == kept


def test_a_file_kept_with_its_profile_stays_for_the_images_made_from_it(pictures, tokensmith_home):
    from studio.app.views.generate import keep_init_image

    image = read_picture(pictures / "tagged.png")
    folder = tokensmith_home / "studio" / "init-images"
    folder.mkdir(parents=True)
    earlier = folder / f"{image_sha256(image)[:16]}.png"  # the pixels shown, and the upload's profile
    image.save(earlier, icc_profile=_swapped_profile())
    before = earlier.read_bytes()
    kept = keep_init_image(image)
    assert kept != earlier and earlier.read_bytes() == before
    assert load_init_image(kept, image.size)[1] == image_sha256(image)


def test_a_file_kept_by_the_studio_before_profiles_reads_as_it_did_with_reader_2(pictures):
    # the studio before kept the stored pixels with the upload's profile (PIL copies it into the PNG)
    with Image.open(pictures / "tagged.png") as upload:
        upload.convert("RGB").save(pictures / "kept_before.png", format="PNG")
    with Image.open(pictures / "kept_before.png") as opened:
        assert "icc_profile" in opened.info
    assert load_init_image(pictures / "kept_before.png", (32, 32), reader=2)[1] == image_sha256(_pixels())


def test_a_replay_of_an_old_image_does_not_leave_its_readers_behind(tiny_session, pictures):
    test_a_match_image_made_from_a_profile_tagged_file_without_a_reader_replays(tiny_session, pictures)
    [after] = tiny_session.generate(
        GenerateRequest("a circle", steps=1, guides=(f"match={pictures / 'tagged.png'}",))
    )
    assert after.provenance["guide_files"][0]["reader"] == MATCH_READER


def test_replay_still_refuses_a_changed_profile_tagged_init_image(tiny_session, pictures):
    request = GenerateRequest("a red circle", init_image=pictures / "tagged.png", strength=0.6, steps=2)
    path = save_png(tiny_session.generate(request)[0], pictures / "made.png")
    _pixels().save(pictures / "tagged.png")  # the same stored pixels, its profile gone: a viewer shows red
    with pytest.raises(ReplayError, match="has changed since"):
        replay(path, session=tiny_session, precise=True)
