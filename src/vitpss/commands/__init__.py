"""The command line: one module per ``vitpss`` subcommand on top of the library.

Nothing outside this package imports it (``vitpss.cli`` dispatches to it by name), and a command
imports no other command; what they share is in :mod:`vitpss.commands.common`.
"""
