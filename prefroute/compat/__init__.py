"""Compatibility layers for users coming from other routing projects.

``prefroute.compat.routellm``: RouteLLM's ``Controller`` surface and checkpoint import
(``prefroute import-routellm``). Importing this package loads nothing heavy.
"""
