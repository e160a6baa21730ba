"""JupyterHub integration: Hub-token identity for the gateway (:mod:`warden.hub.auth`)
and the ``jupyterhub_config.py`` fragment ``warden hub-config`` prints
(:mod:`warden.hub.config`). Nothing here imports jupyterhub: the gateway talks to the
Hub over its REST API, so it runs wherever the Hub API is reachable."""
