"""The doctor: what a file is and whether it fits a model, in plain words (never 'shape mismatch')."""

from types import SimpleNamespace

import safetensors.torch
import torch

from embeddings import Embedding, save_canonical
from embeddings.doctor import diagnose
from embeddings.exporting import export
from trainers.models import pipeline_encoders
from trainers.tiny import tiny_pipeline


def fake_model(**widths):
    """Encoders with only what the doctor reads: input-embedding widths (duck-typed)."""

    def encoder(width):
        layer = torch.nn.Embedding(8, width)
        return SimpleNamespace(get_input_embeddings=lambda: layer)

    return [(key, None, encoder(width)) for key, width in widths.items()]


def sd1_file(tmp_path, n=2):
    path = tmp_path / "neg.pt"
    export(Embedding("neg", {"emb_params": torch.randn(n, 768)}, {"steps": "1419"}), "a1111-pt", path)
    return path


def test_without_a_model_it_says_what_the_file_is(tmp_path):
    report = diagnose(sd1_file(tmp_path))
    text = "\n".join(report.lines)
    assert report.fit == "unknown"
    assert "AUTOMATIC1111 .pt" in text and "SD 1.x" in text and "2 vector(s)" in text and "steps 1419" in text
    assert "--model" in text


def test_sd1_file_on_an_sd2_model_is_explained_in_words(tmp_path):
    report = diagnose(sd1_file(tmp_path), fake_model(emb_params=1024))
    assert report.fit == "no"
    assert "trained for SD 1.x (width 768); this model is SD 2.x (width 1024)" in report.lines[-1]


def test_the_model_is_named_by_its_family_when_given(tmp_path):
    report = diagnose(sd1_file(tmp_path), fake_model(emb_params=64), model_family="demo")
    assert report.fit == "no" and report.model_family == "demo"
    assert (
        report.lines[-1]
        == "does not fit: trained for SD 1.x (width 768); this model is the demo world (width 64)"
    )


def test_sd1_file_on_sdxl_offers_the_partial_clip_l_option(tmp_path):
    report = diagnose(sd1_file(tmp_path), fake_model(clip_l=768, clip_g=1280))
    assert report.fit == "partial"
    assert any("clip_l encoder only" in line for line in report.lines)


def test_an_sd_embedding_as_wide_as_clip_g_is_not_a_partial_fit(tmp_path):
    path = tmp_path / "odd.safetensors"
    safetensors.torch.save_file({"emb_params": torch.randn(1, 1280)}, str(path))
    assert diagnose(path, fake_model(clip_l=768, clip_g=1280)).fit == "no"


def test_sdxl_file_on_sd1_offers_its_clip_l_half(tmp_path):
    path = tmp_path / "xl.safetensors"
    safetensors.torch.save_file({"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)}, str(path))
    report = diagnose(path, fake_model(emb_params=768))
    assert report.fit == "partial" and any("clip_l half" in line for line in report.lines)
    assert diagnose(path, fake_model(emb_params=1024)).fit == "no"


def test_fitting_file_reports_norms_and_warns_when_loud(tmp_path):
    pipe = tiny_pipeline("sd1")
    vocab_mean = float(pipe.text_encoder.get_input_embeddings().weight.norm(dim=1).mean())
    direction = torch.randn(2, 32)
    loud = direction / direction.norm(dim=1, keepdim=True) * vocab_mean * 10
    path = save_canonical(Embedding("loud", {"emb_params": loud}), tmp_path / "loud.safetensors")
    report = diagnose(path, pipeline_encoders(pipe))
    assert report.fit == "fits" and "<loud>" in report.lines[-1]
    assert report.norms["emb_params"]["ratio_to_vocab_mean"][0] > 9
    assert any("overpower" in w for w in report.warnings)
    assert report.to_json()["embedding"]["widths"] == {"emb_params": 32}


def test_unreadable_files_get_a_reason(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x01\x02")
    report = diagnose(path)
    assert report.fit == "unreadable" and "junk.safetensors" in report.lines[0]


def test_too_many_vectors_and_renamed_names_are_warned(tmp_path):
    path = tmp_path / "big name.safetensors"
    safetensors.torch.save_file({"emb_params": torch.randn(80, 768)}, str(path))
    report = diagnose(path)
    assert "exceed the 75 tokens" in report.lines[-1]  # the verdict says it: not again as a warning
    assert not any("exceed" in w for w in report.warnings)
    assert any("stored as 'big-name'" in w for w in report.warnings)


def test_a_file_with_more_vectors_than_the_models_prompt_holds_does_not_fit(tmp_path):
    pipe = tiny_pipeline("sd1")  # its tokenizer reads 16 tokens: 14 between start and end
    path = save_canonical(
        Embedding("long", {"emb_params": torch.randn(15, 32)}), tmp_path / "long.safetensors"
    )
    report = diagnose(path, pipeline_encoders(pipe))
    assert report.fit == "no"
    assert report.lines[-1].startswith(
        "does not fit: its 15 vectors exceed the 14 tokens one prompt window of this model holds"
    )
    assert not any("exceed" in w for w in report.warnings)  # said once, in the verdict
    fits = save_canonical(Embedding("ok", {"emb_params": torch.randn(14, 32)}), tmp_path / "ok.safetensors")
    assert diagnose(fits, pipeline_encoders(pipe)).fit == "fits"


def test_the_doctor_cli_reads_the_demo_models_prompt_length(tmp_path, capsys):
    from clirun import run

    path = save_canonical(
        Embedding("long", {"emb_params": torch.randn(31, 64)}), tmp_path / "long.safetensors"
    )
    code, out, _ = run(capsys, "doctor", path, "--model", "demo")
    assert code == 1  # the demo world reads 32 tokens: 30 between start and end
    assert "does not fit: its 31 vectors exceed the 30 tokens one prompt window of this model holds" in out
    assert "fits this model" not in out


def test_more_vectors_than_any_prompt_holds_does_not_fit_without_a_model(tmp_path, capsys):
    from clirun import run

    path = tmp_path / "huge.safetensors"
    safetensors.torch.save_file({"emb_params": torch.randn(100, 768)}, str(path))
    report = diagnose(path)
    assert report.fit == "no" and not any("exceed" in w for w in report.warnings)
    assert "does not fit any model: its 100 vectors exceed the 75 tokens" in report.lines[-1]
    code, out, _ = run(capsys, "doctor", path)
    assert code == 1 and "does not fit any model: its 100 vectors exceed the 75 tokens" in out
