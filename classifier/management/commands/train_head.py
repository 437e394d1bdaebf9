"""`python manage.py train_head DATA_DIR --output MODEL_DIR`: your own classes.

DATA_DIR has one folder per class; MODEL_DIR receives a head trained on the ResNet50 base
of CLASSIFIER_WEIGHTS, its labels, its metadata and its held-out evaluation
(classifier/training.py says how; classifier/model_dir.py what the files are). Serve it
with CLASSIFIER_MODEL=MODEL_DIR.

`--from-history` adds what users said of the service's answers (classifier/feedback.py):
the confirmed and corrected rows of those classes, by their stored features, no images
needed. The held-out rows then include history rows, and the old head (CLASSIFIER_MODEL,
or `--compare-with`) and the new one are scored on the same ones; MODEL_DIR is written
only if `--output` names it.
"""

import datetime
import importlib.util
import shutil
import tempfile
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from classifier import feedback, model_dir, training
from classifier.engines import ModelLoadError, build_engine
from classifier.engines.base import load_model, weights_name
from classifier.engines.hardware import available_cpus


class Command(BaseCommand):
    help = (
        "Train a head for your own classes on a folder of labelled photos (one folder per class)."
    )

    def add_arguments(self, parser):
        parser.add_argument("data_dir", type=Path, help="one folder per class, named after it")
        parser.add_argument(
            "--output", type=Path,
            help="the model directory to write (with --from-history: only if given)",
        )  # fmt: skip
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
        history = parser.add_argument_group("learning from corrections")
        history.add_argument(
            "--from-history", action="store_true",
            help="add the history's confirmed and corrected rows of these classes",
        )  # fmt: skip
        history.add_argument(
            "--since", type=datetime.date.fromisoformat, metavar="YYYY-MM-DD",
            help="only rows recorded since this day (the site's time zone)",
        )  # fmt: skip
        history.add_argument(
            "--history-version", metavar="VERSION",
            help="only rows answered by this model version",
        )  # fmt: skip
        history.add_argument(
            "--history-limit", type=int, default=feedback.LIMIT, metavar="ROWS",
            help=f"at most this many history rows, the newest (default {feedback.LIMIT:,}; "
            "each needs ~16 kB of memory while read)",
        )  # fmt: skip
        history.add_argument(
            "--compare-with", type=Path, metavar="MODEL_DIR",
            help="the old head to score beside the new one (default: CLASSIFIER_MODEL)",
        )  # fmt: skip

    def handle(self, *args, data_dir: Path, output: Path | None, held_out: float, **options):
        if importlib.util.find_spec("keras") is None:
            raise CommandError(
                "train_head needs TensorFlow (Keras), which the serving image leaves out: run "
                "it from a checkout (`make install`), then bake the model in with "
                "`docker build --build-arg MODEL=...`."
            )
        if not 0 < held_out <= 0.5:
            raise CommandError("--held-out is a share from 0 to 0.5, e.g. 0.2.")
        from_history = options["from_history"]
        if not from_history and (
            options["since"] or options["history_version"] or options["compare_with"]
        ):
            raise CommandError(
                "--since, --history-version and --compare-with go with --from-history."
            )
        if options["history_limit"] < 1:
            raise CommandError("--history-limit is a number of rows, 1 or more.")
        if output is None and not from_history:
            raise CommandError("Name the model directory to write: --output MODEL_DIR.")
        if (
            output is not None
            and output.exists()
            and any(output.iterdir())
            and not options["force"]
        ):
            raise CommandError(f"{output} exists and is not empty; choose another or add --force.")
        created = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        name = options["name"] or (output.resolve().name if output else "")
        version = options["model_version"] or created.strftime("%Y%m%d-%H%M%S")
        try:
            if output is not None:
                model_dir.check_name("name (--name)", name)
            model_dir.check_name("version (--model-version)", version)
            data = training.scan(data_dir)
            self.stdout.write(
                f"{len(data.samples)} files in {len(data.classes)} classes: "
                + ", ".join(data.classes)
            )
            old = self._old_head(options["compare_with"]) if from_history else None
            features = self._features(data, options["engine"], options["precision"])
            self._skipped(data)
            labels = np.array([sample.label for sample in features.samples], dtype=np.int64)
            vectors = features.features
            history = None
            if from_history:
                history = self._history(
                    data.classes,
                    options["since"],
                    options["history_version"],
                    options["history_limit"],
                )
                vectors = np.concatenate([vectors, history.features])
                labels = np.concatenate([labels, history.labels])
            # Which rows came from the history: held out in proportion, like each class.
            origin = np.arange(len(labels)) >= len(features.samples)
            training.check_counts(data.classes, labels)
            train_rows, test_rows = training.split(labels * 2 + origin, held_out)
            head = training.train(
                vectors[train_rows], labels[train_rows], len(data.classes),
                epochs=options["epochs"],
            )  # fmt: skip
            evaluation = training.evaluate(
                head, vectors[test_rows], labels[test_rows], data.classes
            )
        except (training.TrainingError, model_dir.ModelDirError, ModelLoadError) as exc:
            raise CommandError(str(exc)) from exc
        text = training.report(evaluation)
        if from_history:
            comparison = training.compare(
                (old[0], old[1]) if old else None, head, vectors[test_rows], labels[test_rows],
                data.classes, origin[test_rows],
            )  # fmt: skip
            text += "\n" + training.comparison_report(comparison, old[2] if old else None)
            evaluation["compared"] = {"old": old[2] if old else None, **comparison}
        self.stdout.write(text)
        if output is None:
            self.stdout.write(
                "Nothing written: add --output MODEL_DIR to write the new model, then "
                "serve it with CLASSIFIER_MODEL=MODEL_DIR."
            )
            return
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
        if history is not None:
            metadata["history"] = {
                "rows": len(history.ids),
                "confirmed": history.confirmed,
                "corrected": history.corrected,
                "since": options["since"].isoformat() if options["since"] else None,
                "model_version": options["history_version"],
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

    def _old_head(self, path: Path | None):
        """(head, its classes, "name version") of the model to compare with, or None."""
        where = str(path) if path else settings.CLASSIFIER_MODEL
        if not where:
            self.stdout.write(
                "No old head to compare with (CLASSIFIER_MODEL is not set; --compare-with "
                "names one): only the new head is scored."
            )
            return None
        old = load_model(where, settings.CLASSIFIER_WEIGHTS)
        if old.head is None:
            raise CommandError(
                f"{where} is a whole Keras model with its own base: its head reads other "
                "features than the stored ones. Compare with a head.npz model directory."
            )
        kernel, bias = old.head
        head = training.Head(kernel=kernel, bias=bias, epochs=0, seconds=0.0)
        return head, [label.name for label in old.labels], f"{old.name} {old.version}"

    def _history(self, classes, since, version, limit):
        since_at = (
            timezone.make_aware(datetime.datetime.combine(since, datetime.time.min))
            if since
            else None
        )
        rows = feedback.labelled(
            classes,
            weights=weights_name(settings.CLASSIFIER_WEIGHTS),
            since=since_at,
            model_version=version,
            limit=limit,
        )
        scope = "".join(
            [
                f" since {since.isoformat()}" if since else "",
                f" of version {version}" if version else "",
            ]
        )
        self.stdout.write(
            f"History{scope}: {len(rows.ids)} rows added ({rows.confirmed} confirmed, "
            f"{rows.corrected} corrected)"
            + (
                "; left out: " + ", ".join(f"{n} {why}" for why, n in rows.skipped.items())
                if rows.skipped
                else ""
            )
        )
        if rows.limited:
            self.stdout.write(
                f"Only the newest {limit:,} rows were taken (--history-limit); older ones "
                "were left out."
            )
        return rows

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
