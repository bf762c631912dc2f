"""``python -m experiment_config``: print the key reference of docs/configuration.md."""

from .reference import markdown_reference

print(markdown_reference(), end="")
