"""Running `tokensmith` commands in-process from tests, and reading the images they write."""

import numpy as np
from PIL import Image

from studio.cli import main


def run(capsys, *argv):
    """(exit code, stdout, stderr) of `tokensmith ARGV`."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
