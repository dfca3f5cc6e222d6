"""Reusable code for the SmolVLM-on-CPU notebook series.

The notebooks narrate and show the Optimum Intel / OpenVINO calls that matter; this package holds the
plumbing: model choice and offline stand-ins, atomic exports, data loading, timing, plotting, widgets.
One module per concern; import what you need, e.g. ``from helpers import models``.
"""

from helpers import quiet

quiet.install()
