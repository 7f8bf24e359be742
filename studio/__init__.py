"""The user's doors: the `tokensmith` CLI, the Streamlit studio, generation sessions and the job runner."""
