"""`python manage.py export_openvino DIR`: save the Keras ResNet50 as an OpenVINO IR.

The IR is made from CLASSIFIER_WEIGHTS (imagenet, random or a file) and, if set,
CLASSIFIER_MODEL (your own classes' head), never fetched from elsewhere, and records
which weights and model it came from; a server started with
CLASSIFIER_ENGINE=openvino CLASSIFIER_OPENVINO_IR=DIR then needs no conversion (and no
TensorFlow) at start. The Docker build runs this once.
"""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from classifier.engines import ModelLoadError
from classifier.engines.base import load_model
from classifier.engines.openvino import export_ir
from classifier.engines.tensorflow import keras_resnet50


class Command(BaseCommand):
    help = "Export the ResNet50 of CLASSIFIER_WEIGHTS as an OpenVINO IR directory."

    def add_arguments(self, parser):
        parser.add_argument("directory", type=Path)

    def handle(self, *args, directory: Path, **options):
        weights = settings.CLASSIFIER_WEIGHTS
        try:
            classes = load_model(settings.CLASSIFIER_MODEL or None, weights)
            model = keras_resnet50(weights, settings.CLASSIFIER_THREADS or None, classes)
            path = export_ir(model, weights, directory, classes)
        except ModelLoadError as exc:
            raise CommandError(str(exc)) from exc
        size = sum(f.stat().st_size for f in directory.iterdir()) / 1e6
        source = f"CLASSIFIER_WEIGHTS={weights}"
        if classes is not None:
            source += f" and CLASSIFIER_MODEL={settings.CLASSIFIER_MODEL}"
        self.stdout.write(
            f"Wrote {path} ({size:.0f} MB) from {source}. Serve it with "
            f"CLASSIFIER_ENGINE=openvino CLASSIFIER_OPENVINO_IR={directory}"
        )
