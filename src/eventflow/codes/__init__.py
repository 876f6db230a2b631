"""Code plugins: pure parsers, error tables, input renderers for each DFT code.

Like ``eventflow.core``, nothing here does I/O: functions take text and return data.
"""
