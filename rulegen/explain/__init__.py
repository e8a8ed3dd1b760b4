"""`rulegen explain`: every Service port's flows drawn as one self-contained HTML page.

`page` runs the whole thing (compile, the scenarios of `trace.scenarios`,
each mode's tracer through the registry, `trace.compare` for `--compare`,
lint) and renders templates/explain.html.j2; `graph` turns one Service
port's traces into clients, entry points, chains and ends with shares;
`layout` places them in layered columns, deterministically; `svg` draws
them with text, titles and shapes that do not rely on colour. Nothing here
knows a mode: what a mode names its chains is read from its traces.
"""
