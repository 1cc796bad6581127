"""A plugin as files and bytes: its layout on disk, its manifest and versions, its snapshot.

The lowest runtime layer: it imports only the engine (``nyxplug._*``), so the runtime
(``nyxplug.plugins``), ``nyxplug.trust`` and the isolated child can all stand on it.

- :mod:`.layout`: file names, size limits, the plugin-name pattern (cheap to import);
- :mod:`.manifest` and :mod:`.versions`: ``nyxplug.toml`` and semantic versions;
- :mod:`.snapshot`: a plugin folder read once into bytes;
- :mod:`.importer`: importing a plugin from those bytes.

Nothing is re-exported here, so importing one module never loads the others.
"""
