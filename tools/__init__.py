"""Developer tools for the engine; each module is runnable with ``python -m tools.<name>``."""
