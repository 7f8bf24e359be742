"""The demo world: a small text-to-image model trained in this repo on synthetic captioned images."""
