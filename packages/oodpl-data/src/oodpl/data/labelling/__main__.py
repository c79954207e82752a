"""``python -m oodpl.data.labelling``: serve the offline gold judge on loopback (see ``server``)."""

from .server import main

if __name__ == "__main__":
    main()
