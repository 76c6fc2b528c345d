"""Start the vita-duplex server: ``python launch.py --model_path CKPT --ip 0.0.0.0 --port 8081``.

A thin shim over ``server.cli:main`` (also installed as the ``vita-duplex`` command); ``--help`` lists
every option with its default.
"""

import sys

from server.cli import main

if __name__ == "__main__":
    sys.exit(main())
