"""found 0.13's ``found.ext``: its layers at found's paths.

``nstore``, ``eavstore``, ``bstore``, ``pstore`` and ``vnstore`` re-export
the flat ``shale.found.<layer>`` modules, which do the work over
``shale.layers``, and add the helpers and constants found 0.13 has there;
``vnstore.server`` holds what Shale can offer of found's vnstore web UI,
``pool`` found's thread-pool helper. As in found, importing this package imports none of them:
``from shale.found.ext import nstore`` does.
"""
