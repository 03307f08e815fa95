"""Diagnostics: process counters, metrics and the debug endpoint. Built on the core and recipes."""
