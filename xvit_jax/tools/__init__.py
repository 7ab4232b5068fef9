"""Command lines over convert/ and predict: import_official, export_official."""
