"""Helpers every layer of the project uses: atomic file writes and digests (``files``), the typed
config builder that turns parameters into dataclasses naming a bad key by its dotted path
(``schema``), and lazy package exports (``lazy``). Imports nothing else of the project."""
