"""``python -m warden.kernel -f CONNECTION_FILE``: the warden kernel (the kernelspec's argv).

Credentials are moved out of the process environment first (a re-exec; see
:mod:`warden.kernel.handoff`), before ipykernel or any analyst code is loaded."""

from warden.kernel.handoff import isolate_secrets

if __name__ == "__main__":
    isolate_secrets()
    from warden.kernel.kernel import main

    main()
