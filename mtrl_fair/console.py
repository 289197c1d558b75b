"""What the ``mtrl-fair`` command prints when something is wrong, and the exit codes it returns."""

from __future__ import annotations

__all__ = ["EXIT_BAD_INPUT", "EXIT_DISK_FULL", "EXIT_NON_FINITE", "EXIT_RUN_DIR_BUSY", "error", "one_line_warning"]

# Exit codes of `mtrl-fair train` (documented in the README's section on faults).
EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3
EXIT_RUN_DIR_BUSY = 4
EXIT_DISK_FULL = 5


def error(message: str) -> None:
    """``error: <message>`` on standard error, in one line."""
    from rich.console import Console
    from rich.markup import escape

    # Escaped: a message may hold brackets (".[wandb]", "[reach-v3]") that rich would read as markup.
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """Warnings as one line each (a fallback such as an uncapturable update), without source lines."""
    return f"warning: {message}\n"
