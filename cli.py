"""``python cli.py fit|validate|test|predict --config smoke.yaml`` in a clone; the CLI is ``lightning_modules.cli``.

Installed (``pip install .``), the same command is ``coatnet-lightning fit --config smoke.yaml``.
"""

from lightning_modules.cli import CONFIG_DIR, CoAtNetCLI, console_main, main

__all__ = ["CONFIG_DIR", "CoAtNetCLI", "main"]

if __name__ == "__main__":
    console_main()
