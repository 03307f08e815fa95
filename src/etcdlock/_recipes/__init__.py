"""Recipes built on the client core: sessions and locks."""
