"""Start the vita-duplex server: ``python launch.py --model_path CKPT --ip 0.0.0.0 --port 8081``.

A thin shim over ``server.cli:main`` (also installed as the ``vita-duplex`` command); ``--help`` lists
every option with its default. Without ``--model_path`` it serves a tiny random checkpoint (noise).
The import stays inside the guard: vLLM's spawned workers re-import this module and must not load the
web stack (see ``server/cli.py``).
"""

import sys

if __name__ == "__main__":
    from server.cli import main

    sys.exit(main())
