"""An empty home is refused by every door (the CLI, `python -m trainers`, the studio started by hand), and a
config file an older version wrote can be mended by a flag on resume, its own errors naming the file."""

import subprocess
import sys

import pytest

from embeddings.errors import TokensmithError
from trainers.commands import home_from_environment
from trainers.config import ConfigError
from trainers.configfile import load


@pytest.mark.parametrize("value", ["", "  "])
def test_the_trainer_refuses_an_empty_tokensmith_home(monkeypatch, value):
    monkeypatch.setenv("TOKENSMITH_HOME", value)
    with pytest.raises(TokensmithError, match="TOKENSMITH_HOME is set but empty"):
        home_from_environment()
    monkeypatch.delenv("TOKENSMITH_HOME")
    assert home_from_environment().name == ".tokensmith"


def test_python_m_trainers_refuses_an_empty_home_flag(tmp_path):
    (tmp_path / "run.toml").write_text('images = "x"\nname = "cat"\n')
    done = subprocess.run(
        [sys.executable, "-m", "trainers", "--config", str(tmp_path / "run.toml"), "--home", ""],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--home is empty: give a folder" in done.stderr


def test_the_studio_started_with_an_empty_home_says_so_instead_of_a_traceback(monkeypatch):
    from apppage import open_page

    monkeypatch.setenv("TOKENSMITH_HOME", "")
    at = open_page("views/library.py")
    assert not at.exception
    assert any("TOKENSMITH_HOME is set but empty" in e.value for e in at.error)


OLD_RUN = 'images = "x"\nname = "cat"\npush_to_hub = "me/cat"\nhub_license = "cc-by-sa-2.0"\n'


def test_a_flag_mends_a_value_an_old_config_holds_that_is_no_longer_valid(tmp_path):
    """hub_license 'cc-by-sa-2.0' passed the old shape check; the hub's list (checked now) has no such id."""
    path = tmp_path / "config.toml"
    path.write_text(OLD_RUN)
    with pytest.raises(ConfigError, match=r"^config file .*config\.toml: licence 'cc-by-sa-2\.0'"):
        load(path)
    assert load(path, overrides={"hub_license": "other", "resume": True}).hub_license == "other"


def test_an_error_a_flag_causes_does_not_blame_the_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('images = "x"\nname = "cat"\n')
    with pytest.raises(ConfigError) as caught:
        load(path, overrides={"steps": 0})
    assert "steps must be at least 1" in str(caught.value) and "config file" not in str(caught.value)
