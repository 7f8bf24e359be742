"""Readers and writers for the layouts other tools use; `embeddings.importing`/`exporting` pick one."""
