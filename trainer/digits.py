"""Digit MLP trainer: a Keras MLP given as a layer string such as "1024-512-10".

Reads the example TFRecords of the digits job (`jobs/digits.py` documents the
directory), prints the parameter budget, trains with Adam on sparse cross-entropy,
divides the learning rate when eval loss stalls, stops early on eval loss (keeping the
best epoch's weights), and writes the SavedModel, metrics.json and the plots.
`jobs.digits.run` calls `train` after preprocessing. `DigitsConfig` declares the
training parameters once: their flags, defaults and checks.

Hidden layers are Dense + ReLU, each followed by dropout while training (`dropout`, 0
turns it off; serving never drops); the output layer is Dense + softmax.
"""

import logging
import re
import time

import keras  # Keras 3, explicitly: tf.keras may be Keras 2 (see TF_USE_LEGACY_KERAS)
import numpy as np
import pydantic
import tensorflow as tf

from core import outputs, plots
from core.params import Params, param
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
      ValueError: "--layers '...': why", when it is not of that form.
    """
    try:
        return _layer_sizes(text, num_inputs, num_classes)
    except ValueError as e:
        raise ValueError(f"--layers {e}") from None


def _layer_sizes(text, num_inputs, num_classes):
    """`parse_layers` without the flag's name in its messages."""
    parts = [p.strip() for p in str(text).split("-")]
    if not all(_LAYER_SIZE.fullmatch(p) for p in parts):
        raise ValueError(f"{text!r}: expected layer sizes joined by '-', input first, "
                         f"such as '{num_inputs}-512-{num_classes}'")
    sizes = tuple(int(p) for p in parts)
    if len(sizes) < 2:
        raise ValueError(f"{text!r}: needs at least the input and output sizes, "
                         f"such as '{num_inputs}-{num_classes}'")
    if any(s <= 0 for s in sizes):
        raise ValueError(f"{text!r}: every layer size must be positive")
    if sizes[0] != num_inputs:
        raise ValueError(f"{text!r}: the first size must be {num_inputs}, the "
                         f"{schema.IMAGE_SIZE}x{schema.IMAGE_SIZE} input pixels")
    if sizes[-1] != num_classes:
        raise ValueError(f"{text!r}: the last size must be {num_classes}, "
                         "the number of classes")
    return sizes


class DigitsConfig(Params):
    """The MLP and its training: the training flags of `embedflow digits` (see jobs/digits.py)."""

    layers: str = param("1024-512-10", help="MLP layer sizes, input to output")
    epochs: int = param(30, ge=1, help="most epochs")
    batch_size: int = param(128, ge=1, help="batch size")
    learning_rate: float = param(1e-3, gt=0, help="Adam learning rate")
    dropout: float = param(0.5, ge=0, lt=1,
                           help="dropout after every hidden layer while training; 0 = off")
    lr_decay_factor: float = param(0.2, gt=0, le=1,
                                   help="multiply the learning rate by this when eval loss stalls; "
                                        "1 = off")
    lr_decay_patience: int = param(1, ge=0,
                                   help="epochs without a lower eval loss before that")
    patience: int = param(4, ge=0, help="stop after this many epochs without a lower eval loss")
    shuffle_buffer: int = param(10_000, ge=1, help="training examples shuffled together")
    seed: int = param(0, ge=0, help="seed of weights and shuffling")

    @pydantic.field_validator("layers")
    @classmethod
    def _check_layers(cls, text):
        _layer_sizes(text, schema.IMAGE_PIXELS, schema.NUM_CLASSES)
        return text

    @property
    def layer_sizes(self):
        return parse_layers(self.layers)


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

    eval_data = make_dataset(eval_files, batch_size=max(config.batch_size, 1024), count=eval_count)
    history, best_epoch = fit(config, model, train_files, train_count, eval_data)
    trained = time.time()
    # Train accuracy over the whole training set with the kept weights, not the running
    # average Keras logs while the weights change.
    train_metrics = common.classification_metrics(
        *predict_classes(model, make_dataset(train_files, batch_size=1024, count=train_count)),
        schema.NUM_CLASSES)
    eval_metrics = common.classification_metrics(
        *predict_classes(model, eval_data), schema.NUM_CLASSES)
    gap = train_metrics["accuracy"] - eval_metrics["accuracy"]
    print(f"digits: kept epoch {best_epoch + 1} of {len(history['loss'])}: train accuracy "
          f"{train_metrics['accuracy']:.4f}, eval accuracy {eval_metrics['accuracy']:.4f}, "
          f"gap {gap:+.4f}", flush=True)

    export_model(model, outputs.join(output_dir, schema.MODEL_DIR))
    write_metrics(config, output_dir, eval_metrics, train_metrics, history, best_epoch)
    return {
        "layers": config.layers,
        "parameters": num_params,
        "train_examples": train_count,
        "examples_per_parameter": ratio,
        "parameter_warning": warning,
        "epochs_run": len(history["loss"]),
        "best_epoch": best_epoch + 1,
        "stopped_early": len(history["loss"]) < config.epochs,
        "train_accuracy": train_metrics["accuracy"],
        "eval_accuracy": eval_metrics["accuracy"],
        "eval_examples": eval_metrics["examples"],
        "accuracy_gap": gap,
        "seconds": round(time.time() - started, 2),
        "seconds_fit": round(trained - started, 2),
    }


def fit(config, model, train_files, train_count, eval_data):
    """Trains `model` with early stopping on eval loss, the best epoch's weights kept.

    Returns:
      (Keras history dict, best epoch 0-based).
    """
    train_data = make_dataset(train_files, batch_size=config.batch_size, count=train_count,
                              shuffle_buffer=config.shuffle_buffer, seed=config.seed)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                            restore_best_weights=True)
    callbacks = [stopper]
    if config.lr_decay_factor < 1:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=config.lr_decay_factor,
            patience=config.lr_decay_patience, min_lr=config.learning_rate * 1e-3, verbose=1))
    history = model.fit(train_data, validation_data=eval_data, epochs=config.epochs,
                        callbacks=callbacks, shuffle=False, verbose=2)
    return ({k: [float(v) for v in values] for k, values in history.history.items()},
            int(stopper.best_epoch))


def write_metrics(config, output_dir, eval_metrics, train_metrics, history, best_epoch):
    """Writes metrics.json and the plots (see jobs/digits.py)."""
    metrics = {
        **eval_metrics,
        "split": schema.EVAL,
        "train": train_metrics,
        "train_accuracy": train_metrics["accuracy"],
        "accuracy_gap": train_metrics["accuracy"] - eval_metrics["accuracy"],
        "best_epoch": best_epoch + 1,
        "epochs_run": len(history["loss"]),
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
