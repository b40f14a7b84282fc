"""The side commands, one module each: ``plan``, ``evaluate`` (``rlwhf eval``), ``export``, ``distill``,
``check_data`` and ``filter_data`` (``rlwhf data check|filter``), ``inspect``. Each is a plain function
that ``rlwhf.cli`` calls and a test can call without typer; it raises the errors of ``rlwhf.errors``
(or ``ValueError``, a missing file) and the CLI turns them into exit codes."""
