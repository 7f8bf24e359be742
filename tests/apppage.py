"""Opening one studio page under Streamlit's AppTest, as the page tests do."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "studio" / "app" / "main.py")


def open_page(page: str, **query) -> AppTest:
    """The studio app switched to `page` ("views/library.py") with `query` in the URL, run once, no
    exception."""
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at
