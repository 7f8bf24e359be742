"""The Streamlit studio: `main.py` is the entry script (`tokensmith ui` runs it); one page script per tab in
`pages/`; `context.py` holds the cached loaders the pages share."""
