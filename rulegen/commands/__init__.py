"""One module per CLI command beyond `compile`; each defines a click command named `command`.

`rulegen.cli` registers every module listed in `COMMANDS` that exists, so a
command is added by writing its module and naming it here.
"""

COMMANDS = ("apply", "diff", "golden", "trace", "lint", "lab", "bench")
