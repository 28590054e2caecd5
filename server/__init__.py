"""The TRM HTTP server: `python -m server` (see server/__main__.py) or `create_app(settings)`."""
