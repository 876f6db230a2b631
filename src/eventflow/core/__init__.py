"""The functional core: pure modules that do no I/O.

Nothing under ``eventflow.core`` or ``eventflow.codes`` may import sqlite3,
subprocess, watchdog or touch the file system; tests/unit/test_purity.py
enforces it.
"""
