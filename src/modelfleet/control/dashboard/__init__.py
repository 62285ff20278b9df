"""The live dashboard the daemon serves on loopback: services, replicas, traffic and scaling.

``server.py`` (HTTP, event stream, actions), ``views.py`` (what each endpoint answers),
``ring.py`` (one sample a second per service, an hour of them), ``login.py`` (one-time codes
and sessions), ``actions.py`` (the buttons, carried out by the CLI) and ``static/`` (the page,
with uPlot vendored under ``static/vendor`` with its MIT licence).
"""
