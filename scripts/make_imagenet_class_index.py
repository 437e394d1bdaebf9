"""Generate classifier/data/imagenet_class_index.json from the timm wheel on PyPI.

Keras's own class index (`imagenet_class_index.json`) is downloaded at run time by
`keras.applications.imagenet_utils.decode_predictions`; this service must work offline,
so it ships an equivalent file. Keras's names are the first WordNet lemma of each ILSVRC
2012 synset with spaces replaced by underscores (`Walker hound, Walker foxhound` ->
`Walker_hound`), in the sorted-wnid order the model was trained with. timm ships both
lists as package data, so the file can be regenerated without any non-PyPI download:

    pip download --no-deps timm==1.0.31 -d /tmp/timm
    python scripts/make_imagenet_class_index.py /tmp/timm/timm-1.0.31-py3-none-any.whl
"""

import json
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "classifier" / "data" / "imagenet_class_index.json"


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        synsets = zf.read("timm/data/_info/imagenet_synsets.txt").decode().split()
        lemmas = dict(
            line.split("\t", 1)
            for line in zf.read("timm/data/_info/imagenet_synset_to_lemma.txt")
            .decode()
            .splitlines()
            if line
        )
    if len(synsets) != 1000 or synsets != sorted(synsets):
        raise SystemExit("expected the 1000 ILSVRC-2012 synsets in sorted order")
    index = {
        str(i): [wnid, lemmas[wnid].split(",")[0].strip().replace(" ", "_")]
        for i, wnid in enumerate(synsets)
    }
    # One class a line, in the same JSON shape as Keras's file, so diffs stay readable.
    lines = [f"{json.dumps(key)}: {json.dumps(value)}" for key, value in index.items()]
    OUT.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {len(index)} classes to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
