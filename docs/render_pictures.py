"""Save the last image of every ``pictures/*`` tag of a TensorBoard run as a PNG (for the README).

python docs/render_pictures.py logs/smoke/version_0 docs/images
python docs/render_pictures.py logs/smoke/version_0 docs/images --only attention/stage3
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Collection
from pathlib import Path

from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

MAX_BYTES = 200_000


def render_pictures(
    run_dir: Path, out_dir: Path, prefix: str = "pictures/", only: Collection[str] | None = None
) -> list[Path]:
    """Write ``<tag with / replaced by _>.png`` per image tag; re-quantised to a palette if over ``MAX_BYTES``.

    ``only``: tags without ``prefix`` to write, so one new picture can be added without touching the others.
    """
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for tag in events.Tags()["images"]:
        if not tag.startswith(prefix) or (only is not None and tag[len(prefix) :] not in only):
            continue
        image = Image.open(io.BytesIO(events.Images(tag)[-1].encoded_image_string)).convert("RGB")
        path = out_dir / (tag[len(prefix) :].replace("/", "_") + ".png")
        image.save(path, optimize=True)
        if path.stat().st_size > MAX_BYTES:
            image.quantize(colors=128).save(path, optimize=True)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="TensorBoard version folder holding the event file")
    parser.add_argument("out_dir", type=Path, help="folder for the PNG files")
    parser.add_argument("--only", nargs="+", help="tags to write, without 'pictures/' (default: all)")
    args = parser.parse_args()
    for path in render_pictures(args.run_dir, args.out_dir, only=args.only):
        print(f"{path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
