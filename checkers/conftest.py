"""The checkers' fixtures and hooks live in shared/course/pytest_plugin.py, loaded for every run through
`-p shared.course.pytest_plugin` in pyproject.toml (so `--track` works with or without paths)."""
