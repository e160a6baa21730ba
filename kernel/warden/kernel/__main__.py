"""``python -m warden.kernel -f CONNECTION_FILE``: the warden kernel (the kernelspec's argv)."""

from warden.kernel.kernel import main

if __name__ == "__main__":
    main()
