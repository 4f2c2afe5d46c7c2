"""Digit MLP trainer: a Keras MLP given as a layer string such as "1024-512-10".

Reads the example TFRecords of the digits job (`pipelines/digits.py` documents the
directory), prints the parameter budget, trains with Adam on sparse cross-entropy,
divides the learning rate when eval loss stalls, stops early on eval loss (keeping the
best epoch's weights), and writes the SavedModel, metrics.json and the plots.
`pipelines.digits.run` calls `train` after preprocessing.

Hidden layers are Dense + ReLU, each followed by dropout while training (`dropout`, 0
turns it off; serving never drops); the output layer is Dense + softmax.
"""

import dataclasses
import logging
import re
import time

import keras  # Keras 3, explicitly: tf.keras may be Keras 2 (see TF_USE_LEGACY_KERAS)
import numpy as np
import tensorflow as tf

from core import outputs, plots
from schemas import digits as schema
from trainer import common

_LAYER_SIZE = re.compile(r"[0-9]+")


def parse_layers(text, num_inputs=schema.IMAGE_PIXELS, num_classes=schema.NUM_CLASSES):
    """Parses a layer string such as "1024-512-10" into sizes, input first.

    Args:
      text: sizes joined by "-".
      num_inputs: the size the first layer must have.
      num_classes: the size the last layer must have.

    Returns:
      tuple of ints, at least (num_inputs, num_classes).

    Raises:
      ValueError: naming the string, when it is not of that form.
    """
    parts = [p.strip() for p in str(text).split("-")]
    if not all(_LAYER_SIZE.fullmatch(p) for p in parts):
        raise ValueError(f"--layers {text!r}: expected layer sizes joined by '-', input first, "
                         f"such as '{num_inputs}-512-{num_classes}'")
    sizes = tuple(int(p) for p in parts)
    if len(sizes) < 2:
        raise ValueError(f"--layers {text!r}: needs at least the input and output sizes, "
                         f"such as '{num_inputs}-{num_classes}'")
    if any(s <= 0 for s in sizes):
        raise ValueError(f"--layers {text!r}: every layer size must be positive")
    if sizes[0] != num_inputs:
        raise ValueError(f"--layers {text!r}: the first size must be {num_inputs}, the "
                         f"{schema.IMAGE_SIZE}x{schema.IMAGE_SIZE} input pixels")
    if sizes[-1] != num_classes:
        raise ValueError(f"--layers {text!r}: the last size must be {num_classes}, "
                         "the number of classes")
    return sizes


@dataclasses.dataclass(frozen=True)
class DigitsConfig:
    """Model and training settings; the defaults are the CLI's."""
    layers: str = "1024-512-10"
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    dropout: float = 0.5  # after every hidden layer, while training
    lr_decay_factor: float = 0.2  # learning rate x this ...
    lr_decay_patience: int = 1  # ... after this many epochs without a lower eval loss
    patience: int = 4  # stop after this many epochs without a lower eval loss
    shuffle_buffer: int = 10_000
    seed: int = 0

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"--learning-rate must be > 0, got {self.learning_rate}"),
            (0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}"),
            (0 < self.lr_decay_factor <= 1,
             f"--lr-decay-factor must be in (0, 1], got {self.lr_decay_factor}"),
            (self.lr_decay_patience >= 0,
             f"--lr-decay-patience must be >= 0, got {self.lr_decay_patience}"),
            (self.patience >= 0, f"--patience must be >= 0, got {self.patience}"),
            (self.shuffle_buffer >= 1, f"--shuffle-buffer must be >= 1, got {self.shuffle_buffer}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        parse_layers(self.layers)

    @property
    def layer_sizes(self):
        return parse_layers(self.layers)


def config_from_args(args):
    """The DigitsConfig of parsed `embedflow digits` flags (validated)."""
    return DigitsConfig(layers=args.layers, epochs=args.epochs, batch_size=args.batch_size,
                        learning_rate=args.learning_rate, dropout=args.dropout,
                        lr_decay_factor=args.lr_decay_factor,
                        lr_decay_patience=args.lr_decay_patience, patience=args.patience,
                        shuffle_buffer=args.shuffle_buffer, seed=args.seed)


def config_dict(config):
    return {**dataclasses.asdict(config), "layer_sizes": list(config.layer_sizes)}


def build_model(config):
    """The compiled MLP: Dense + ReLU (+ dropout) hidden layers, softmax output.

    Deterministic per seed: weights and dropout masks are seeded from `config.seed`.
    """
    sizes = config.layer_sizes
    inputs = keras.Input(shape=(sizes[0],), name=schema.IMAGE_KEY)
    x = inputs
    for i, units in enumerate(sizes[1:-1], 1):
        x = keras.layers.Dense(
            units, activation="relu", name=f"hidden_{i}",
            kernel_initializer=keras.initializers.GlorotUniform(seed=config.seed * 1000 + i))(x)
        if config.dropout:
            x = keras.layers.Dropout(config.dropout, seed=config.seed * 1000 + 500 + i,
                                     name=f"dropout_{i}")(x)
    outputs = keras.layers.Dense(
        sizes[-1], activation="softmax", name="probabilities",
        kernel_initializer=keras.initializers.GlorotUniform(seed=config.seed * 1000))(x)
    model = keras.Model(inputs, outputs, name="mlp_" + "_".join(map(str, sizes)))
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return model


def make_dataset(files, *, batch_size, count=None, shuffle_buffer=0, seed=None):
    """Example TFRecords -> batches of (float32 [batch, 1024] images, int64 [batch] labels).

    Args:
      files: example files (schema.FEATURE_SPEC, GZIP).
      batch_size: examples per batch.
      count: the number of examples, when known: Keras then knows the epoch's length.
      shuffle_buffer: examples shuffled together, drawn again every epoch; 0 keeps file order.
      seed: shuffle seed.
    """
    if not files:
        raise ValueError("make_dataset: no example files")
    dataset = tf.data.TFRecordDataset(list(files), compression_type=schema.EXAMPLES_COMPRESSION,
                                      num_parallel_reads=min(len(files), 4))
    if count is not None:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def parse(serialized):
        features = tf.io.parse_example(serialized, schema.FEATURE_SPEC)
        return features[schema.IMAGE_KEY], features[schema.LABEL_KEY]

    return (dataset.batch(batch_size)
            .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def predict_classes(model, dataset):
    """(true labels, predicted classes) over a dataset of (images, labels), in its order."""
    labels, predicted = [], []
    for images, batch_labels in dataset:
        predicted.append(np.argmax(model(images, training=False), axis=1))
        labels.append(batch_labels.numpy())
    return np.concatenate(labels), np.concatenate(predicted)


def export_model(model, path):
    """Writes a SavedModel that serves 1024-float rows and 32x32 images (see the schema)."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=schema.SERVE_ENDPOINT,
        fn=lambda image: model(image, training=False),
        input_signature=[tf.TensorSpec([None, schema.IMAGE_PIXELS], tf.float32, name="image")])
    archive.add_endpoint(
        name=schema.SERVE_IMAGES_ENDPOINT,
        fn=lambda images: model(tf.reshape(images, [-1, schema.IMAGE_PIXELS]), training=False),
        input_signature=[tf.TensorSpec([None, schema.IMAGE_SIZE, schema.IMAGE_SIZE], tf.float32,
                                       name="images")])
    archive.write_out(path, verbose=False)


def train(config, *, train_files, eval_files, train_count, eval_count, output_dir):
    """Trains, evaluates and exports one model into `output_dir`.

    Args:
      config: DigitsConfig.
      train_files, eval_files: example TFRecord files of each split.
      train_count, eval_count: number of examples in each split.
      output_dir: where the model, metrics.json and plots go.

    Returns:
      dict for info.json: parameter count and budget, epochs, accuracies, seconds.
    """
    started = time.time()
    keras.utils.set_random_seed(config.seed)
    model = build_model(config)
    num_params = common.count_params(model)
    ratio, budget, warning = common.parameter_budget(num_params, train_count)
    print(f"digits: model {config.layers}: {budget}", flush=True)
    if warning:
        print(f"digits: WARNING: {warning}", flush=True)
        logging.warning("digits: %s", warning)

    train_data = make_dataset(train_files, batch_size=config.batch_size, count=train_count,
                              shuffle_buffer=config.shuffle_buffer, seed=config.seed)
    eval_data = make_dataset(eval_files, batch_size=max(config.batch_size, 1024), count=eval_count)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                            restore_best_weights=True)
    callbacks = [stopper]
    if config.lr_decay_factor < 1:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=config.lr_decay_factor,
            patience=config.lr_decay_patience, min_lr=config.learning_rate * 1e-3, verbose=1))
    history = model.fit(train_data, validation_data=eval_data, epochs=config.epochs,
                        callbacks=callbacks, shuffle=False, verbose=2)
    history = {k: [float(v) for v in values] for k, values in history.history.items()}
    epochs_run = len(history["loss"])
    best_epoch = int(stopper.best_epoch)
    trained = time.time()

    # Train accuracy over the whole training set with the kept weights, not the running
    # average Keras logs while the weights change.
    train_metrics = common.classification_metrics(
        *predict_classes(model, make_dataset(train_files, batch_size=1024, count=train_count)),
        schema.NUM_CLASSES)
    eval_metrics = common.classification_metrics(
        *predict_classes(model, eval_data), schema.NUM_CLASSES)
    gap = train_metrics["accuracy"] - eval_metrics["accuracy"]
    print(f"digits: kept epoch {best_epoch + 1} of {epochs_run}: train accuracy "
          f"{train_metrics['accuracy']:.4f}, eval accuracy {eval_metrics['accuracy']:.4f}, "
          f"gap {gap:+.4f}", flush=True)

    export_model(model, outputs.join(output_dir, schema.MODEL_DIR))
    metrics = {
        **eval_metrics,
        "split": schema.EVAL,
        "train": train_metrics,
        "train_accuracy": train_metrics["accuracy"],
        "accuracy_gap": gap,
        "best_epoch": best_epoch + 1,
        "epochs_run": epochs_run,
        "history": history,
        "class_names": list(range(schema.NUM_CLASSES)),
    }
    outputs.write_json(outputs.join(output_dir, schema.METRICS_FILE), metrics)
    plots.plot_confusion_matrix(
        eval_metrics["confusion_matrix"], range(schema.NUM_CLASSES),
        outputs.join(output_dir, schema.CONFUSION_MATRIX_PLOT),
        title=f"{config.layers}: eval confusion matrix (accuracy {eval_metrics['accuracy']:.4f})")
    plots.plot_learning_curves(history, outputs.join(output_dir, schema.LEARNING_CURVES_PLOT),
                                best_epoch=best_epoch, title=f"{config.layers}: learning curves")
    return {
        "layers": config.layers,
        "parameters": num_params,
        "train_examples": train_count,
        "examples_per_parameter": ratio,
        "parameter_warning": warning,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch + 1,
        "stopped_early": epochs_run < config.epochs,
        "train_accuracy": train_metrics["accuracy"],
        "eval_accuracy": eval_metrics["accuracy"],
        "eval_examples": eval_metrics["examples"],
        "accuracy_gap": gap,
        "seconds": round(time.time() - started, 2),
        "seconds_fit": round(trained - started, 2),
    }
