"""Shipped models: one folder per model, each with manifest.json and its artifacts."""
