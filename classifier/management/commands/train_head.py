"""`python manage.py train_head DATA_DIR --output MODEL_DIR`: your own classes.

DATA_DIR has one folder per class; MODEL_DIR receives a head trained on the ResNet50 base
of CLASSIFIER_WEIGHTS, its labels, its metadata and its held-out evaluation
(classifier/training.py says how; classifier/model_dir.py what the files are). Serve it
with CLASSIFIER_MODEL=MODEL_DIR.
"""

import datetime
import importlib.util
import shutil
import tempfile
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from classifier import model_dir, training
from classifier.engines import ModelLoadError, build_engine
from classifier.engines.base import weights_name
from classifier.engines.hardware import available_cpus


class Command(BaseCommand):
    help = (
        "Train a head for your own classes on a folder of labelled photos (one folder per class)."
    )

    def add_arguments(self, parser):
        parser.add_argument("data_dir", type=Path, help="one folder per class, named after it")
        parser.add_argument(
            "--output", type=Path, required=True, help="the model directory to write"
        )
        parser.add_argument(
            "--held-out", type=float, default=0.2,
            help="share of each class kept aside to test the model (default 0.2)",
        )  # fmt: skip
        parser.add_argument("--name", help="the model's name (default: the output folder's name)")
        parser.add_argument(
            "--model-version", help="the model's version (default: when it was made)"
        )
        parser.add_argument(
            "--engine", choices=["openvino", "tensorflow"], default="openvino",
            help="what computes the features (default openvino, the faster)",
        )  # fmt: skip
        parser.add_argument(
            "--precision", choices=["fp32", "bf16"], default="bf16",
            help="bf16 where the CPU has it, else fp32 (default bf16)",
        )  # fmt: skip
        parser.add_argument("--epochs", type=int, default=200)
        parser.add_argument("--force", action="store_true", help="replace an existing MODEL_DIR")

    def handle(self, *args, data_dir: Path, output: Path, held_out: float, **options):
        if importlib.util.find_spec("keras") is None:
            raise CommandError(
                "train_head needs TensorFlow (Keras), which the serving image leaves out: run "
                "it from a checkout (`make install`), then bake the model in with "
                "`docker build --build-arg MODEL=...`."
            )
        if not 0 < held_out <= 0.5:
            raise CommandError("--held-out is a share from 0 to 0.5, e.g. 0.2.")
        if output.exists() and any(output.iterdir()) and not options["force"]:
            raise CommandError(f"{output} exists and is not empty; choose another or add --force.")
        created = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        name = options["name"] or output.resolve().name
        version = options["model_version"] or created.strftime("%Y%m%d-%H%M%S")
        try:
            model_dir.check_name("name (--name)", name)
            model_dir.check_name("version (--model-version)", version)
            data = training.scan(data_dir)
            self.stdout.write(
                f"{len(data.samples)} files in {len(data.classes)} classes: "
                + ", ".join(data.classes)
            )
            features = self._features(data, options["engine"], options["precision"])
            self._skipped(data)
            labels = np.array([sample.label for sample in features.samples], dtype=np.int64)
            training.check_counts(data.classes, labels)
            train_rows, test_rows = training.split(labels, held_out)
            head = training.train(
                features.features[train_rows], labels[train_rows], len(data.classes),
                epochs=options["epochs"],
            )  # fmt: skip
            evaluation = training.evaluate(
                head, features.features[test_rows], labels[test_rows], data.classes
            )
        except (training.TrainingError, model_dir.ModelDirError, ModelLoadError) as exc:
            raise CommandError(str(exc)) from exc
        text = training.report(evaluation)
        self.stdout.write(text)
        counts = data.counts()
        usable = dict.fromkeys(data.classes, 0)
        for label in labels:
            usable[data.classes[label]] += 1
        metadata = {
            "name": name,
            "version": version,
            "base_weights": weights_name(settings.CLASSIFIER_WEIGHTS),
            "classes": data.classes,
            "images": usable,
            "files": counts,
            "skipped": len(data.skipped),
            "trained_on": int(len(train_rows)),
            "held_out": int(len(test_rows)),
            "held_out_accuracy": evaluation["accuracy"],
            "created": created.isoformat(),
            "data_sha256": features.data_sha256,
            "features": {
                "engine": self.engine_info.engine,
                "precision": self.engine_info.precision,
            },
            "epochs": head.epochs,
        }
        evaluation = {
            **evaluation,
            "features_seconds": round(features.seconds, 2),
            "images_per_second": round(len(features.samples) / features.seconds, 1),
            "train_seconds": round(head.seconds, 2),
        }
        self._write(output, data.classes, head, metadata, evaluation, text)
        self.stdout.write(
            f"Features of {len(features.samples)} images in {features.seconds:.1f} s "
            f"({evaluation['images_per_second']} images/s, {self.engine_info.engine} "
            f"{self.engine_info.precision}); head trained in {head.seconds:.1f} s.\n"
            f"Wrote {output}. Serve it with CLASSIFIER_MODEL={output}"
        )

    def _features(self, data, engine_name: str, precision: str):
        engine = build_engine(
            engine=engine_name,
            weights=settings.CLASSIFIER_WEIGHTS,
            precision=precision,
            threads=settings.CLASSIFIER_THREADS or None,
        )
        self.engine_info = engine.info
        self.stdout.write(
            f"Computing features with {engine.info.engine} {engine.info.precision} "
            f"(base weights: {engine.info.weights})"
        )
        import keras  # after the engine, which sets TensorFlow's log level

        bar = keras.utils.Progbar(len(data.samples), unit_name="image")
        return training.extract(
            data,
            engine.forward,
            max_bytes=settings.CLASSIFIER_MAX_IMAGE_BYTES,
            max_pixels=settings.CLASSIFIER_MAX_PIXELS,
            threads=available_cpus(),
            progress=bar.add,
        )

    def _skipped(self, data) -> None:
        if not data.skipped:
            return
        self.stdout.write(f"Skipped {len(data.skipped)} file(s):")
        for path, why in data.skipped:
            self.stdout.write(f"  {path.relative_to(data.root)}: {why}")

    def _write(self, output: Path, classes, head, metadata, evaluation, text) -> None:
        """Into a new folder beside `output`, then moved into place: a half-written model
        never stands where a server would read it."""
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
        staging.chmod(0o755)  # mkdtemp makes it private: a server may run as another user
        try:
            model_dir.save(
                staging,
                labels=classes,
                kernel=head.kernel,
                bias=head.bias,
                metadata=metadata,
                evaluation=evaluation,
                report=text,
            )
            model_dir.load(staging)  # what a server will read
            if output.exists():
                shutil.rmtree(output)
            staging.rename(output)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
