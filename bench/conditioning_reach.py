"""Can the demo world paint a concept at all, and can a token reach it? Optimise the conditioning itself.

    python bench/conditioning_reach.py "pink square"      # about 8 minutes on a 2-core CPU

Textual inversion reaches only the states that the frozen text encoder outputs. This probe takes the
concept's 5 renders (`random.Random(0)`, latents fitted to the decoder as the trainer caches them) and the
trainer's denoising loss. On the prompt `a red circle` (BOS, a, red, circle, end-of-text, padding), it
optimises three things with Adam and then judges 12 samples of each, made with seeds 100-111, 20 steps and
guidance 4:
- `token`: the input rows of a 2-vector token in place of `red circle`, through the whole encoder (what
  training does);
- `token states`: the encoder's outputs at those two positions, set freely;
- `end states`: the encoder's outputs at the end-of-text and padding positions, set freely.
A state set freely still passes through the encoder's final LayerNorm, so it is one the encoder could output.
The last lines are one per probe: `token states: distance 94.8, colour 0/12, shape 0/12`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from learn_concepts import SAMPLE_SEEDS, render_images, score

PROMPT = "a red circle"
TOKEN_POSITIONS = slice(2, 4)  # `red circle` after BOS and `a`
END_POSITIONS = slice(4, None)  # end-of-text and padding


class FreeStates:
    """A conditioner (trainers.loop.step_loss's interface) whose states at `positions` are free numbers: the
    last layer's states of PROMPT with those replaced, through the encoder's final LayerNorm."""

    def __init__(self, last_layer: torch.Tensor, positions: slice, final_norm):
        self.before = last_layer[:, : positions.start]  # (1, p, D)
        self.free = last_layer[:, positions].clone().requires_grad_(True)  # (1, P, D)
        self.after = last_layer[:, positions.stop or last_layer.shape[1] :]  # (1, L - p - P, D)
        self.final_norm = final_norm

    def encode(self, prompts: list[str], device) -> tuple[torch.Tensor, None]:
        states = self.final_norm(torch.cat([self.before, self.free, self.after], dim=1))  # (1, L, D)
        return states.expand(len(prompts), -1, -1), None  # (B, L, D)


def fit(unet, conditioner, prompt: str, params: list, cache, maths, *, steps: int, lr: float) -> None:
    """Adam on `params` against the trainer's loss (`step_loss`) on batches of 4 cached latents."""
    from trainers.loop import draw_batch, step_loss

    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        indices = torch.randint(0, len(cache.means), (4,), generator=generator).tolist()
        batch = draw_batch(cache, indices, [prompt] * 4, maths, generator)
        step_loss(unet, conditioner, maths, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("concept", help='a demo-world concept, e.g. "pink square"')
    parser.add_argument("--steps", type=int, default=400, help="Adam steps per probe")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam's learning rate")
    args = parser.parse_args(argv)
    import tempfile

    from trainers.data import load_images
    from trainers.families import Conditioner, tokenize
    from trainers.latents import encode_samples
    from trainers.loop import DiffusionMath
    from trainers.models import load_model
    from trainers.rows import attach, detach_rows
    from trainers.samples import build_samples

    torch.set_num_threads(1)
    pipe = load_model("demo").pipe
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = render_images(args.concept, Path(tmp), seed=0)
        samples = build_samples(
            load_images(folder),
            resolution=32,
            crop="center",
            flip=True,
            alpha_weight=False,
            multiple=8,
            seed=0,
        )
    cache = encode_samples(pipe.vae, samples, refine_steps=50)
    maths = DiffusionMath.from_scheduler(pipe.scheduler)
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    with torch.no_grad():
        # (1, L, D): the last layer's states, before the final LayerNorm
        last_layer = encoder(tokenize(tokenizer, [PROMPT]), output_hidden_states=True).hidden_states[-1]
        negative = encoder(tokenize(tokenizer, [""]))[0]  # (1, L, D)

    def judged(conditioner, prompt: str):
        with torch.no_grad():
            hidden, _ = conditioner.encode([prompt], "cpu")  # (1, L, D)
        images = pipe(
            prompt_embeds=hidden,
            negative_prompt_embeds=negative,
            num_images_per_prompt=len(SAMPLE_SEEDS),
            num_inference_steps=20,
            guidance_scale=4.0,
            generator=[torch.Generator().manual_seed(seed) for seed in SAMPLE_SEEDS],
        ).images
        return score(images, args.concept)

    results = {}
    red_circle = encoder.get_input_embeddings().weight[tokenize(tokenizer, ["red circle"])[0, 1:3]]  # (2, D)
    rows = attach("emb_params", tokenizer, encoder, "probe", red_circle)
    token = Conditioner("single", [rows])
    prompt = f"a {token.token_text()}"
    fit(pipe.unet, token, prompt, [rows.rows], cache, maths, steps=args.steps, lr=args.lr)
    results["token"] = judged(token, prompt)
    detach_rows(rows)
    for label, positions in (("token states", TOKEN_POSITIONS), ("end states", END_POSITIONS)):
        free = FreeStates(last_layer, positions, encoder.final_layer_norm)
        fit(pipe.unet, free, PROMPT, [free.free], cache, maths, steps=args.steps, lr=args.lr)
        results[label] = judged(free, PROMPT)
    for label, result in results.items():
        n = result.samples
        right = f"colour {result.colour}/{n}, shape {result.shape}/{n}"
        print(f"{label}: distance {result.distance:.1f}, {right}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
