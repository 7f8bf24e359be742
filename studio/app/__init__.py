"""The Streamlit studio: `main.py` is the entry script (`tokensmith ui` runs it); one page script per tab in
`views/` (not `pages/`: Streamlit would also serve a `pages/` folder as pages of its own, bypassing
`st.navigation` and the sidebar); `context.py` holds the cached loaders the pages share."""
