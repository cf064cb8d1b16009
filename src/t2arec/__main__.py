"""``python -m t2arec``: the ``t2arec`` command, as torchrun starts it (``torchrun ... -m t2arec run``)."""
from t2arec.cli import main

if __name__ == "__main__":
    main()
