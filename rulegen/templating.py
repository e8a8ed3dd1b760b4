"""Jinja2 environment for the layout templates in `templates/`.

Templates lay out whole outputs (tables, headers, COMMIT, reports). The hot
per-rule lines are joined in code before they reach a template.

A page template (a name ending in `.html.j2`) escapes every value it
prints; markup made in code (explain's SVG) reaches it as `Markup`. The
text templates print values as they are.

They are read from the package's own `templates` folder: in a checkout,
`rulegen/templates` is a link to the top-level `templates/`; an installed
rulegen carries the files there as package data (pyproject.toml), so it
works outside the checkout too.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


def _is_page(name: str | None) -> bool:
    return bool(name) and name.endswith(".html.j2")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        keep_trailing_newline=True,
        autoescape=_is_page,
        undefined=jinja2.StrictUndefined,
    )


def render(name: str, **context) -> str:
    return environment().get_template(name).render(**context)
