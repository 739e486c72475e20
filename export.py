"""``python export.py ...`` in a clone; the exporter is ``lightning_modules/export.py`` (``coatnet-export``
when installed)."""

from lightning_modules.export import main

if __name__ == "__main__":
    main()
