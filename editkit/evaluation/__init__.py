"""Measuring edit models: settings, metrics, the edits of held-out rows and the
judges' verdicts. It writes tables (JSON, Markdown); the report writes HTML."""
