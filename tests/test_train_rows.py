"""Only the new rows train: all other rows stay bit-identical, and the file has the right layout."""

import pytest
import torch
from tinyrun import quick_config, square_images, tiny_model
from torch.optim.optimizer import register_optimizer_step_pre_hook

from embeddings import Store, load_canonical
from trainers import train
from trainers.rows import attach, detach_rows
from trainers.tiny import tiny_pipeline


@pytest.fixture
def images(tmp_path):
    return square_images(tmp_path / "images")


def _quick(images, tmp_path, **changes):
    return quick_config(images, tmp_path / "run", **changes)


def _every_weight(model) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer of the UNet, the VAE and each text encoder."""
    parts = {"unet": model.pipe.unet, "vae": model.pipe.vae, **{key: te for key, _, te in model.encoders}}
    return {
        f"{part}.{name}": value.detach().clone()
        for part, module in parts.items()
        for name, value in module.state_dict().items()
    }


@pytest.mark.parametrize(
    ("family", "keys"), [("sd1", {"emb_params": 32}), ("sdxl", {"clip_l": 32, "clip_g": 48})]
)
def test_only_new_rows_change_and_the_file_has_the_family_layout(
    images, tmp_path, tokensmith_home, family, keys
):
    model = tiny_model(family)
    tables = {key: te.get_input_embeddings().weight.detach().clone() for key, _, te in model.encoders}
    weights = _every_weight(model)
    vocab = [len(tok) for _, tok, _ in model.encoders]
    attention = [te.config._attn_implementation for _, _, te in model.encoders]
    emb = train(_quick(images, tmp_path, vectors=2), home=tokensmith_home, model=model)
    assert [te.config._attn_implementation for _, _, te in model.encoders] == attention  # put back
    for key, _, te in model.encoders:
        assert torch.equal(te.get_input_embeddings().weight, tables[key]), f"{key} table changed"
        assert emb.vectors[key].shape == (2, keys[key])
        init = tables[key][model.encoders[0][1].convert_tokens_to_ids("a</w>")]
        assert not torch.allclose(emb.vectors[key][0], init), f"{key} rows did not learn"
    after = _every_weight(model)  # every weight of every part: a norm or bias that trained shows here
    assert after.keys() == weights.keys()
    assert [name for name, value in after.items() if not torch.equal(value, weights[name])] == []
    assert [len(tok) for _, tok, _ in model.encoders] == vocab  # the model's tokenizers are untouched
    stored = Store.for_home(tokensmith_home).get("thing")
    assert set(stored.vectors) == set(keys) and stored.meta["family"] == emb.family
    assert torch.equal(stored.vectors[next(iter(keys))], emb.vectors[next(iter(keys))])
    assert Store.for_home(tokensmith_home).preview_path("thing").is_file()
    snapshot = load_canonical(tmp_path / "run" / "snapshots" / "step-000003.safetensors")
    assert snapshot.widths == keys


def test_rows_embedding_routes_new_ids_to_trainable_rows():
    pipe = tiny_pipeline("sd1")
    table = pipe.text_encoder.get_input_embeddings()
    init = torch.randn(2, 32)
    rows = attach("emb_params", pipe.tokenizer, pipe.text_encoder, "cat", init)
    assert "<cat>" not in pipe.tokenizer.get_vocab()  # the model's own tokenizer is not changed
    ids = rows.tokenizer("a <cat> <cat>_1", add_special_tokens=False).input_ids
    out = pipe.text_encoder.get_input_embeddings()(torch.tensor([ids]))
    assert torch.equal(out[0, 1:], init) and torch.equal(out[0, 0], table.weight[ids[0]])
    out.sum().backward()
    assert table.weight.grad is None and rows.rows.grad.shape == (2, 32)
    learned = detach_rows(rows)
    assert pipe.text_encoder.get_input_embeddings() is table and torch.equal(learned, init)


def test_init_from_a_phrase_spreads_its_tokens_over_the_vectors():
    from trainers.families import spread

    vectors = torch.arange(6.0).view(3, 2)
    assert spread(vectors, 3).tolist() == vectors.tolist()
    assert spread(vectors, 6).tolist() == [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5], [4, 5]]
    assert spread(vectors, 2).tolist() == [[1, 2], [4, 5]]  # groups [0, 1] and [2], averaged


def test_init_from_a_stored_embedding(images, tmp_path, tokensmith_home):
    first = train(
        _quick(images, tmp_path, name="first", steps=3, run_dir=str(tmp_path / "r1")),
        home=tokensmith_home,
        model=tiny_model("sd1"),
    )
    cfg = _quick(
        images,
        tmp_path,
        name="second",
        steps=1,
        learning_rate=1e-9,
        init="<first>",
        run_dir=str(tmp_path / "r2"),
    )
    second = train(cfg, home=tokensmith_home, model=tiny_model("sd1"))
    assert torch.allclose(second.vectors["emb_params"], first.vectors["emb_params"], atol=1e-6)
    assert second.meta["init"] == "<first>"


def test_stored_name_is_refused_before_training(images, tmp_path, tokensmith_home):
    train(_quick(images, tmp_path, steps=1), home=tokensmith_home, model=tiny_model("sd1"))
    with pytest.raises(Exception, match="already stored"):
        train(
            _quick(images, tmp_path, steps=1, run_dir=str(tmp_path / "other")),
            home=tokensmith_home,
            model=tiny_model("sd1"),
        )


def test_a_bf16_run_gives_the_callers_model_back_in_its_own_dtype(images, tmp_path, tokensmith_home):
    model = tiny_model("sd1")
    modules = (model.pipe.unet, model.pipe.vae, model.pipe.text_encoder)
    assert all(m.dtype == torch.float32 for m in modules)
    emb = train(_quick(images, tmp_path, steps=1, mixed_precision="bf16"), home=tokensmith_home, model=model)
    assert all(m.dtype == torch.float32 for m in modules)  # cast to bf16 for the run, back afterwards
    assert emb.vectors["emb_params"].dtype == torch.float32


def test_a_bf16_run_casts_without_diffusers_empty_keep_in_float32_warning(
    images, tmp_path, tokensmith_home, capfd
):
    """diffusers' `.to(dtype)` warns that modules "should be kept in float32" even when it lists none; four
    such lines on every half-precision run (cast and restore, UNet and VAE) tell the user nothing."""
    train(
        _quick(images, tmp_path, steps=1, mixed_precision="bf16"),
        home=tokensmith_home,
        model=tiny_model("sd1"),
    )
    assert "kept in float32" not in capfd.readouterr().err


def test_cast_weights_keeps_the_modules_a_class_lists_in_float32():
    from trainers.modelprep import cast_weights

    unet = tiny_pipeline("sd1").unet
    unet._keep_in_fp32_modules = ["time_embedding"]
    cast_weights(unet, torch.bfloat16)
    assert unet.conv_in.weight.dtype == torch.bfloat16
    assert unet.time_embedding.linear_1.weight.dtype == torch.float32
    cast_weights(unet, torch.float32)
    assert all(p.dtype == torch.float32 for p in unet.parameters())


def test_a_bf16_run_updates_float32_rows_with_float32_gradients(images, tmp_path, tokensmith_home):
    """The frozen weights are bf16, the trainable rows are not: bf16 rows would lose AdamW's small updates."""
    seen = []

    def record(optimizer, args, kwargs):
        rows = optimizer.param_groups[0]["params"][0]
        seen.append((rows.dtype, rows.grad.dtype))

    hook = register_optimizer_step_pre_hook(record)
    try:
        train(
            _quick(images, tmp_path, steps=2, mixed_precision="bf16"),
            home=tokensmith_home,
            model=tiny_model("sd1"),
        )
    finally:
        hook.remove()
    assert seen == [(torch.float32, torch.float32)] * 2


def test_rows_on_a_half_precision_encoder_take_loss_scaling():
    """fp16 training scales the loss and unscales the gradients before the step; torch refuses to unscale
    fp16 gradients, so the rows must stay float32 on an fp16 text encoder (checked with the CPU scaler)."""
    pipe = tiny_pipeline("sd1")
    text_encoder = pipe.text_encoder.to(torch.float16)
    table = text_encoder.get_input_embeddings().weight
    rows = attach("emb_params", pipe.tokenizer, text_encoder, "half", table[:2].float())
    assert rows.rows.dtype == torch.float32
    assert text_encoder.dtype == torch.float16, "the encoder's dtype (what pipelines cast to) is the table's"
    ids = rows.tokenizer("a <half> <half>_1", return_tensors="pt").input_ids
    optimizer = torch.optim.AdamW([rows.rows], lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(text_encoder(ids)[0].float().pow(2).mean()).backward()
    scaler.unscale_(optimizer)  # raises "Attempting to unscale FP16 gradients" for fp16 rows
    assert rows.rows.grad.dtype == torch.float32 and torch.isfinite(rows.rows.grad).all()
    before = rows.rows.detach().clone()
    scaler.step(optimizer)
    assert not torch.equal(rows.rows, before)
    detach_rows(rows)


def test_half_precision_weights_are_cast_before_they_move_to_the_device(monkeypatch):
    """SDXL's frozen weights are 14 GB in float32: the device should only ever receive the bf16/fp16 copy."""
    from types import SimpleNamespace

    from trainers.modelprep import prepare_model, restore_model

    model = tiny_model("sd1")
    pipe = model.pipe
    moved = []
    monkeypatch.setattr(
        type(pipe),
        "to",
        lambda self, device: moved.append([pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype]),
    )
    cfg = SimpleNamespace(mixed_precision="bf16", gradient_checkpointing=False)
    originals = prepare_model(model, SimpleNamespace(device=torch.device("cpu")), cfg)
    assert moved == [[torch.bfloat16] * 3]
    restore_model(model, originals)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float32


def test_the_sdxl_unet_is_told_each_image_s_size_and_crop(tmp_path, tokensmith_home):
    from PIL import Image

    folder = tmp_path / "wide"
    folder.mkdir()
    for i in range(3):  # wider than the 32 px square each is cropped to
        Image.new("RGB", (48, 32), (200, 40 * i, 30)).save(folder / f"{i}.png")
    model = tiny_model("sdxl")
    seen = []
    hook = model.pipe.unet.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True
    )
    try:
        config = _quick(folder, tmp_path, steps=2, flip=False, resolution=32, preview_images=0)
        train(config, home=tokensmith_home, model=model)
    finally:
        hook.remove()
    rows = {tuple(row) for ids in seen for row in ids.tolist()}  # training and validation steps alike
    assert seen and rows == {(32.0, 48.0, 0.0, 8.0, 32.0, 32.0)}  # source 48x32; crop 8 px in from the left
