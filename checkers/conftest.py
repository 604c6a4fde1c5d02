"""The checkers' fixtures and hooks live in shared/pytest_plugin.py, loaded for every run through
`-p shared.pytest_plugin` in pyproject.toml (so `--track` works with or without paths)."""
