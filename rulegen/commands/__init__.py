"""One module per CLI command beyond `compile`; each defines a click command named `command`.

`rulegen.cli` loads a module listed in `COMMANDS` when its command is named, so a
command is added by writing its module and naming it here.
"""

COMMANDS = ("apply", "diff", "golden", "trace", "lint", "lab", "bench", "explain")
