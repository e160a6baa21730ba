"""The warden Jupyter kernel: IPython with audited ``%%sql`` and a record of every cell.

* :mod:`warden.kernel.kernel` — :class:`WardenKernel` and ``main`` (``python -m warden.kernel``)
* :mod:`warden.kernel.install` — ``warden install`` (the kernelspec)
* :mod:`warden.kernel.connect` — where the gateway is, and the kernel's identity
* :mod:`warden.kernel.client` — the gateway client with streaming, cancel and events
* :mod:`warden.kernel.events` — ``cell.execute`` / session events, source redaction
* :mod:`warden.kernel.session` — the session and the cell now running

Importing this package does not import ipykernel; the kernel module does.
"""
