"""Sentiment classifier: averaged pretrained word embeddings + dense layers (Keras 3).

Reads the examples of the sentiment job (`pipelines/sentiment.py` documents the
directory). The model (`build_model`):

    token ids [batch, tokens]  (corpus ids; -1 pads; the corpus OOV id, vocab_size, is unknown)
      -> embedding [vocab_size, dim], initialised from the trained vectors scaled to unit
         length (`normalize`; skip-gram makes frequent words the longest) or at random for
         the scratch baseline; frozen or fine-tuned (pretrained rows at `fine_tune_rate`
         times the learning rate)
      -> the mean over the tokens that are neither padding nor OOV (a text without one
         averages to zeros); while training, each token is dropped with probability
         `word_dropout` first (the "word dropout" of Iyyer et al.'s deep averaging network)
      -> batch normalisation of the mean (`standardize`): every coordinate centred and
         scaled, as a linear model on such features wants
      -> `hidden_layers` x (dropout, Dense `hidden` + ReLU) -> dropout
      -> Dense + sigmoid (two classes) or softmax (more).

The scratch baseline is the same model with embeddings drawn uniformly in +-0.05 and
always trained (a frozen random table is no baseline), from the same seeds, on the same
examples. Embedding rows are updated lazily: Adam's moments and the update touch only
the rows a batch holds, so a step costs what the batch's tokens cost, not what the
whole vocabulary does, and a row no training text holds keeps its pretrained value.

Training: Adam on cross-entropy; `validation_fraction` of every training set (chosen by
a sha256 of the example key, so nothing else is drawn) is kept aside for early stopping
on its loss, the best epoch's weights kept. An epoch is a pass over the training set or
`min_epoch_batches` batches, whichever is more. Evaluation units (`splits`): K folds (fold
= key mod K), or one held-out set. A learning curve trains again on the first n
examples of each training fold, ordered by another sha256 of the key (so the subsets
are nested and the same for pretrained and scratch), for every n of `curve_sizes`
smaller than the fold. With folds, the exported model is trained on every example.
"""

import dataclasses
import hashlib
import logging
import time
import typing

import keras  # Keras 3, explicitly: tf.keras may be Keras 2 (see TF_USE_LEGACY_KERAS)
import numpy as np
import tensorflow as tf

from core import outputs, plots, tokens
from schemas import embeddings as embeddings_schema
from schemas import sentiment as schema
from trainer import common

PRETRAINED = "pretrained"
SCRATCH = "scratch"
_SCRATCH_INIT = 0.05  # scratch embeddings: uniform in +-this (Keras's default)


@dataclasses.dataclass(frozen=True)
class SentimentConfig:
    """Model and training settings; the defaults are the CLI's."""
    hidden: int = 64
    hidden_layers: int = 1
    fine_tune: bool = True  # train the pretrained embeddings too
    dropout: float = 0.5  # before every dense layer, while training
    word_dropout: float = 0.5  # share of tokens dropped from each text, while training
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 2e-3
    patience: int = 4  # stop after this many epochs without a lower validation loss
    min_epoch_batches: int = 50  # an epoch is a pass over the training set or this many batches
    validation_fraction: float = 0.1
    normalize: bool = True  # scale every pretrained vector to unit length first
    standardize: bool = True  # batch-normalise the mean vector before the dense layers
    fine_tune_rate: float = 0.1  # learning rate of fine-tuned pretrained embeddings, relative
    # to the rest (scratch embeddings, with nothing to keep, train at the full rate)
    seed: int = 0

    def __post_init__(self):
        checks = [
            (self.hidden >= 1, f"--hidden must be >= 1, got {self.hidden}"),
            (self.hidden_layers >= 0, f"--hidden-layers must be >= 0, got {self.hidden_layers}"),
            (0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}"),
            (0 <= self.word_dropout < 1,
             f"--word-dropout must be in [0, 1), got {self.word_dropout}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"--learning-rate must be > 0, got {self.learning_rate}"),
            (self.fine_tune_rate > 0, f"--fine-tune-rate must be > 0, got {self.fine_tune_rate}"),
            (self.patience >= 0, f"--patience must be >= 0, got {self.patience}"),
            (self.min_epoch_batches >= 1,
             f"--min-epoch-batches must be >= 1, got {self.min_epoch_batches}"),
            (0 < self.validation_fraction < 1,
             f"--validation-fraction must be in (0, 1), got {self.validation_fraction}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def config_from_args(args):
    """The SentimentConfig of parsed `embedflow sentiment` flags (None: the default)."""
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(SentimentConfig)
             if getattr(args, field.name, None) is not None}
    return SentimentConfig(**given)


def config_dict(config):
    return dataclasses.asdict(config)


def derive_seed(*parts):
    """A 31-bit seed from any parts, through sha256 (never `hash()`)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def _key_positions(keys, salt):
    """Each key's place in [0, 1) after hashing it with `salt`: independent draws per salt."""
    return np.array([int.from_bytes(hashlib.sha256(b"%s:%d" % (salt, int(k))).digest()[:8], "big")
                     / 2.0 ** 64 for k in keys])


# ------------------------------------------------------------------------ examples


class Examples(typing.NamedTuple):
    """Examples in memory: ids[i] (int64 array), labels[i] and keys[i] of example i."""
    ids: list
    labels: np.ndarray
    keys: np.ndarray

    def take(self, indices):
        indices = np.asarray(indices, np.int64)
        return Examples([self.ids[i] for i in indices], self.labels[indices], self.keys[indices])

    def __len__(self):
        return len(self.ids)


def load_examples(files):
    """Example TFRecords (schema.FEATURE_SPEC, GZIP) -> Examples, in file order."""
    if not files:
        raise ValueError("load_examples: no example files")
    ids, labels, keys = [], [], []
    dataset = tf.data.TFRecordDataset(list(files), compression_type=schema.EXAMPLES_COMPRESSION)
    for batch in dataset.batch(4096):
        parsed = tf.io.parse_example(batch, schema.FEATURE_SPEC)
        ragged = tf.RaggedTensor.from_sparse(parsed[schema.TOKEN_IDS_KEY])
        values, splits = ragged.values.numpy(), ragged.row_splits.numpy()
        ids += [values[a:b] for a, b in zip(splits[:-1], splits[1:])]
        labels.append(parsed[schema.LABEL_KEY].numpy())
        keys.append(parsed[schema.TEXT_KEY_HASH].numpy())
    return Examples(ids, np.concatenate(labels), np.concatenate(keys))


def concat_examples(a, b):
    return Examples(a.ids + b.ids, np.concatenate([a.labels, b.labels]),
                    np.concatenate([a.keys, b.keys]))


def make_dataset(examples, *, batch_size, shuffle_seed=None, repeat=False):
    """Examples -> batches of (int64 ids [batch, longest], int64 labels [batch]), -1 padding.

    Args:
      examples: Examples.
      batch_size: examples per batch.
      shuffle_seed: shuffle all examples with this seed, again every pass; None keeps order.
      repeat: pass over the examples again and again (the caller counts the batches).
    """
    if not len(examples):
        raise ValueError("make_dataset: no examples")
    lengths = np.array([len(i) for i in examples.ids], np.int64)
    ids = tf.RaggedTensor.from_row_lengths(np.concatenate(examples.ids).astype(np.int64), lengths)
    dataset = tf.data.Dataset.from_tensor_slices((ids, examples.labels.astype(np.int64)))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(examples), seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    return (dataset.ragged_batch(batch_size)
            .map(lambda ids, labels: (ids.to_tensor(default_value=-1), labels))
            .prefetch(tf.data.AUTOTUNE))


def load_vectors(embeddings_dir, vocab_size):
    """The trained vectors, float32 [vocab_size, dim]; row i is corpus id i."""
    path = outputs.join(embeddings_dir, embeddings_schema.VECTORS_NPY)
    with tf.io.gfile.GFile(path, "rb") as f:
        vectors = np.load(f)
    if vectors.ndim != 2 or vectors.shape[0] != vocab_size:
        raise ValueError(f"--embeddings {embeddings_dir}: {embeddings_schema.VECTORS_NPY} has shape "
                         f"{vectors.shape}, expected {vocab_size} rows (the corpus vocabulary)")
    return vectors.astype(np.float32)


# --------------------------------------------------------------------------- model


class TokenMean(keras.layers.Layer):
    """Token ids -> the mean of their embeddings over known tokens (padding, OOV left out).

    Ids outside [0, vocab_size) are unknown: -1 pads, vocab_size is the corpus OOV id.
    While training, each known token is dropped with probability `word_dropout`.
    """

    def __init__(self, vocab_size, dim, *, trainable_embeddings=True, word_dropout=0.0, seed=0,
                 **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.word_dropout = float(word_dropout)
        self.embedding = keras.layers.Embedding(
            self.vocab_size, dim, name="embedding", trainable=trainable_embeddings,
            embeddings_initializer=keras.initializers.RandomUniform(
                -_SCRATCH_INIT, _SCRATCH_INIT, seed=seed))
        self.seed_generator = keras.random.SeedGenerator(seed + 1)

    def build(self, input_shape):
        self.embedding.build(input_shape)

    def call(self, ids, training=False):
        ids = keras.ops.cast(ids, "int64")
        known = keras.ops.logical_and(ids >= 0, ids < self.vocab_size)
        if training and self.word_dropout > 0:
            kept = keras.random.uniform(keras.ops.shape(ids), seed=self.seed_generator)
            known = keras.ops.logical_and(known, kept >= self.word_dropout)
        vectors = self.embedding(keras.ops.where(known, ids, keras.ops.zeros_like(ids)))
        weights = keras.ops.expand_dims(keras.ops.cast(known, vectors.dtype), -1)
        total = keras.ops.sum(vectors * weights, axis=1)
        return total / keras.ops.maximum(keras.ops.sum(weights, axis=1), 1.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.embedding.output_dim)


class LazyAdam(keras.optimizers.Adam):
    """Adam whose sparse (embedding) updates touch only the rows in the batch, at
    `sparse_scale` times the learning rate.

    Dense Adam updates every row of a 76,000 x 100 table at every step (decaying the
    moments of rows the batch never saw); here the moments and the update of a row change
    only when a batch holds it, so a step costs what the batch costs. Dense gradients get
    plain Adam. TensorFlow backend only (it updates through tf.IndexedSlices).
    """

    def __init__(self, learning_rate=1e-3, *, sparse_scale=1.0, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.sparse_scale = float(sparse_scale)

    def get_config(self):
        return {**super().get_config(), "sparse_scale": self.sparse_scale}

    def update_step(self, gradient, variable, learning_rate):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        rows, position = tf.unique(gradient.indices)
        grad = tf.math.unsorted_segment_sum(tf.cast(gradient.values, variable.dtype), position,
                                            tf.shape(rows)[0])
        step = tf.cast(self.iterations + 1, variable.dtype)
        alpha = (tf.cast(learning_rate * self.sparse_scale, variable.dtype) * tf.sqrt(1 - self.beta_2 ** step)
                 / (1 - self.beta_1 ** step))
        # Keras keeps one moment pair per variable, found by the variable's index.
        index = self._get_variable_index(variable)  # pylint: disable=protected-access
        m, v = self._momentums[index], self._velocities[index]
        m_rows = self.beta_1 * tf.gather(m.value, rows) + (1 - self.beta_1) * grad
        v_rows = self.beta_2 * tf.gather(v.value, rows) + (1 - self.beta_2) * tf.square(grad)
        self.assign(m, tf.IndexedSlices(m_rows, rows))
        self.assign(v, tf.IndexedSlices(v_rows, rows))
        self.assign_sub(variable, tf.IndexedSlices(
            alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))
        return None


def build_model(config, *, vocab_size, dim, num_classes, vectors=None):
    """The compiled classifier (see the module docstring).

    Args:
      config: SentimentConfig.
      vocab_size: rows of the embedding (the corpus vocabulary; its OOV id is unknown).
      dim: embedding width.
      num_classes: 2 gives a sigmoid output [batch, 1]; more a softmax [batch, classes].
      vectors: float32 [vocab_size, dim] initial embeddings; None draws them at random
        (the scratch baseline, always trained).

    Returns:
      keras.Model from int64 ids [batch, tokens] (-1 pads) to probabilities.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if vectors is not None and tuple(vectors.shape) != (vocab_size, dim):
        raise ValueError(f"vectors of shape {vectors.shape}, expected {(vocab_size, dim)}")
    seed = config.seed
    ids = keras.Input(shape=(None,), dtype="int64", name=schema.TOKEN_IDS_KEY)
    mean = TokenMean(vocab_size, dim, trainable_embeddings=config.fine_tune or vectors is None,
                     word_dropout=config.word_dropout, seed=seed, name="token_mean")
    x = mean(ids)
    if config.standardize:
        x = keras.layers.BatchNormalization(name="standardize")(x)
    for i in range(1, config.hidden_layers + 1):
        if config.dropout:
            x = keras.layers.Dropout(config.dropout, seed=seed * 1000 + 500 + i, name=f"dropout_{i}")(x)
        x = keras.layers.Dense(config.hidden, activation="relu", name=f"hidden_{i}",
                               kernel_initializer=keras.initializers.GlorotUniform(seed=seed * 1000 + i))(x)
    if config.dropout:
        x = keras.layers.Dropout(config.dropout, seed=seed * 1000 + 500, name="dropout_out")(x)
    binary = num_classes == 2
    outputs = keras.layers.Dense(
        1 if binary else num_classes, activation="sigmoid" if binary else "softmax",
        name="probabilities", kernel_initializer=keras.initializers.GlorotUniform(seed=seed * 1000))(x)
    model = keras.Model(ids, outputs, name="averaged_embeddings")
    if vectors is not None:
        mean.embedding.embeddings.assign(vectors)
    if binary:
        loss, accuracy = keras.losses.BinaryCrossentropy(), keras.metrics.BinaryAccuracy(name="accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
        accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    # Pretrained rows move slowly, so a few hundred texts adjust them rather than overwrite
    # them (Adam's steps are about the learning rate whatever the gradient's size).
    sparse_scale = config.fine_tune_rate if vectors is not None else 1.0
    model.compile(optimizer=LazyAdam(config.learning_rate, sparse_scale=sparse_scale),
                  loss=loss, metrics=[accuracy])
    return model


def class_probabilities(outputs):
    """Model outputs -> probabilities [batch, classes] (a sigmoid's p becomes [1 - p, p])."""
    outputs = np.asarray(outputs)
    return np.concatenate([1 - outputs, outputs], axis=1) if outputs.shape[1] == 1 else outputs


def trainable_params(model):
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


# ------------------------------------------------------------------------ training


def unit_rows(vectors):
    """Every row scaled to unit length (zero rows stay zero).

    Skip-gram gives frequent words the longest vectors; unscaled, "the" and "of" weigh
    most in a text's mean, while what sets a text's class are rarer words.
    """
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def split_validation(examples, fraction):
    """(fit indices, validation indices): the validation share chosen by the key's sha256.

    At least one example goes to each side when there are two or more.
    """
    positions = _key_positions(examples.keys, b"validation")
    validation = positions < fraction
    if len(examples) >= 2 and not validation.any():
        validation[np.argmin(positions)] = True
    if len(examples) >= 2 and validation.all():
        validation[np.argmax(positions)] = False
    return np.flatnonzero(~validation), np.flatnonzero(validation)


def fit(config, examples, *, vectors, pretrained, num_classes, seed_parts=()):
    """Builds and trains one model with early stopping on a validation share of `examples`.

    Args:
      config: SentimentConfig.
      examples: the training Examples (validation is taken out of them).
      vectors: the trained vectors; their shape sizes the scratch model too.
      pretrained: initialise the embedding from `vectors`, else at random.
      num_classes: number of classes.
      seed_parts: what identifies this training (fold, size): the seed is derived from it,
        the same for pretrained and scratch.

    Returns:
      (model with the best epoch's weights, Keras history dict, best epoch 0-based,
       fit count, validation count).
    """
    seed = derive_seed(config.seed, *seed_parts)
    keras.utils.set_random_seed(seed)
    initial = None
    if pretrained:
        initial = unit_rows(vectors) if config.normalize else vectors
    model = build_model(dataclasses.replace(config, seed=seed % 100_000), vocab_size=vectors.shape[0],
                        dim=vectors.shape[1], num_classes=num_classes, vectors=initial)
    fit_at, validation_at = split_validation(examples, config.validation_fraction)
    train_data = make_dataset(examples.take(fit_at), batch_size=config.batch_size, shuffle_seed=seed,
                              repeat=True)
    # A few hundred examples make an epoch of a few batches: patience counted in such
    # epochs would stop training before it learned anything.
    batches = max(-(-len(fit_at) // config.batch_size), config.min_epoch_batches)
    validation_data = make_dataset(examples.take(validation_at), batch_size=1024)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                            restore_best_weights=True)
    history = model.fit(train_data, validation_data=validation_data, epochs=config.epochs,
                        steps_per_epoch=batches,
                        callbacks=[stopper], shuffle=False, verbose=0)  # shuffled above
    history = {k: [float(v) for v in values] for k, values in history.history.items()}
    return model, history, int(stopper.best_epoch), len(fit_at), len(validation_at)


def predict(model, examples):
    """Probabilities [n, classes] of a model on Examples, in their order."""
    outputs = [model(ids, training=False) for ids, _ in
               make_dataset(examples, batch_size=1024)]
    return class_probabilities(np.concatenate([np.asarray(o) for o in outputs]))


def make_splits(examples, eval_examples, folds, eval_fraction):
    """Evaluation units over one pool of examples.

    Returns:
      (pool Examples, list of (name, train indices, test indices), description).
    """
    if folds:
        fold_of = examples.keys % folds
        splits = [(f"fold {k}", np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k))
                  for k in range(folds)]
        empty = [name for name, train_at, test_at in splits if not len(train_at) or not len(test_at)]
        if empty:
            raise ValueError(f"--folds {folds}: {', '.join(empty)} would be empty with "
                             f"{len(examples)} examples; use fewer folds")
        return examples, splits, f"{folds}-fold cross-validation"
    if eval_examples is not None:
        pool = concat_examples(examples, eval_examples)
        n = len(examples)
        return pool, [("eval", np.arange(n), np.arange(n, len(pool)))], "eval set (--eval-input)"
    held = _key_positions(examples.keys, b"eval") < eval_fraction
    if held.all() or not held.any():
        raise ValueError(f"--eval-fraction {eval_fraction} leaves the train or eval set of "
                         f"{len(examples)} examples empty: change it, or pass --eval-input")
    return (examples, [("eval", np.flatnonzero(~held), np.flatnonzero(held))],
            f"held-out {eval_fraction:g} of --input (by sha256 of the text)")


def curve_order(keys):
    """Positions of the learning-curve order: the first n of it form the size-n subset."""
    return np.argsort(_key_positions(keys, b"curve"), kind="stable")


def _accuracy(probabilities, labels):
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def _summary(values):
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "values": values.tolist()}


def plot_size_curve(curve, path, title):
    """Writes a PNG of accuracy against training-set size (log scale), one line per init."""
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    figure = Figure(figsize=(6.5, 4.5))
    ax = figure.add_subplot()
    sizes = np.asarray(curve["sizes"], np.float64)
    for init in (PRETRAINED, SCRATCH):
        if curve.get(init) is None:
            continue
        mean = np.array([p["mean"] for p in curve[init]])
        std = np.array([p["std"] for p in curve[init]])
        ax.plot(sizes, mean, marker="o", label=f"{init} embeddings")
        ax.fill_between(sizes, mean - std, mean + std, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("training examples")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    plots.save_figure(figure, path)


def export_model(model, corpus_dir, labels, path):
    """Writes a SavedModel from raw strings to probabilities, the corpus transform_fn inside."""
    server = SentimentServer(corpus_dir, model, labels)
    tf.saved_model.save(server, path, signatures={"serving_default": server.serve})


class SentimentServer(tf.Module):
    """Raw strings -> token ids (corpus transform_fn) -> the classifier's probabilities."""

    def __init__(self, corpus_dir, model, labels):
        super().__init__()
        self.tft_layer, _ = tokens.transform_layer(corpus_dir)
        self.model = model
        self.class_names = tf.constant(list(labels))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=schema.SERVING_INPUT)])
    def serve(self, text):
        # [batch, 0] when no text has a token: zeros
        padded = tokens.ragged_ids(self.tft_layer, text).to_tensor(default_value=-1)
        outputs = self.model(padded, training=False)
        if outputs.shape[-1] == 1:
            outputs = tf.concat([1 - outputs, outputs], axis=1)
        class_ids = tf.argmax(outputs, axis=1)
        return {schema.SERVING_PROBABILITIES: outputs, schema.SERVING_CLASS_IDS: class_ids,
                schema.SERVING_CLASSES: tf.gather(self.class_names, class_ids)}


def train(config, *, examples, eval_examples, folds, eval_fraction, vectors, corpus_dir, labels,
          compare_scratch, curve_sizes, output_dir):
    """Evaluates (folds or a held-out set, learning curve), exports a model into `output_dir`.

    Args:
      config: SentimentConfig.
      examples: the --input Examples.
      eval_examples: the --eval-input Examples, or None.
      folds: K for K-fold cross-validation, or None.
      eval_fraction: the held-out share when neither folds nor eval_examples.
      vectors: the trained vectors, float32 [vocab_size, dim].
      corpus_dir: the corpus job output (its transform_fn goes into the SavedModel).
      labels: class names.
      compare_scratch: also train from random embeddings.
      curve_sizes: training-set sizes of the learning curve (the full set is added).
      output_dir: where the model, metrics.json and plots go.

    Returns:
      dict for info.json.
    """
    started = time.time()
    num_classes = len(labels)
    bad = sorted({int(l) for l in examples.labels if not 0 <= l < num_classes})
    if bad:
        raise ValueError(f"examples hold labels {bad} outside the {num_classes} classes")
    pool, splits, description = make_splits(examples, eval_examples, folds, eval_fraction)
    inits = (PRETRAINED, SCRATCH) if compare_scratch else (PRETRAINED,)

    probe = build_model(config, vocab_size=vectors.shape[0], dim=vectors.shape[1],
                        num_classes=num_classes, vectors=vectors)
    num_params, trainable = common.count_params(probe), trainable_params(probe)
    del probe
    largest = max(len(train_at) for _, train_at, _ in splits)
    ratio, budget, warning = common.parameter_budget(trainable, largest)
    print(f"sentiment: {description}; {num_params:,} parameters, trainable: {budget}", flush=True)
    if warning:
        print(f"sentiment: WARNING: {warning}", flush=True)
        logging.warning("sentiment: %s", warning)

    # Accuracy of every (init, size) on every split; out-of-split predictions at full size.
    accuracies = {init: {} for init in inits}
    predicted = {init: np.zeros((len(pool), num_classes), np.float32) for init in inits}
    tested = np.zeros(len(pool), bool)
    kept_model, kept_history, kept_best = None, None, None
    split_sizes = []
    for name, train_at, test_at in splits:
        train_set, test_set = pool.take(train_at), pool.take(test_at)
        order = curve_order(train_set.keys)
        sizes = [n for n in curve_sizes if n < len(train_set)] + [len(train_set)]
        split_sizes.append(sizes)
        tested[test_at] = True
        for n in sizes:
            subset = train_set.take(order[:n])
            for init in inits:
                model, history, best, _, _ = fit(
                    config, subset, vectors=vectors, pretrained=init == PRETRAINED,
                    num_classes=num_classes, seed_parts=(name, n))
                probabilities = predict(model, test_set)
                accuracy = _accuracy(probabilities, test_set.labels)
                accuracies[init].setdefault(n if n < len(train_set) else "all", []).append(accuracy)
                print(f"sentiment: {name}: {init} embeddings, {n:,} training examples: accuracy "
                      f"{accuracy:.4f} (epoch {best + 1} of {len(history['loss'])})", flush=True)
                if n == len(train_set):
                    predicted[init][test_at] = probabilities
                    if init == PRETRAINED and not folds:
                        kept_model, kept_history, kept_best = model, history, best
                keras.backend.clear_session(free_memory=False)

    if folds:
        # Every example was tested once; the exported model learns from all of them.
        kept_model, kept_history, kept_best, _, _ = fit(
            config, pool, vectors=vectors, pretrained=True, num_classes=num_classes,
            seed_parts=("all",))
    export_model(kept_model, corpus_dir, labels, outputs.join(output_dir, schema.MODEL_DIR))

    truth = pool.labels[tested]
    results = {}
    for init in inits:
        pooled = common.classification_metrics(truth, predicted[init][tested].argmax(axis=1),
                                               num_classes)
        results[init] = {**pooled, "split_accuracy": _summary(accuracies[init]["all"])}
    # The curve's x: the sizes asked for that every split could give, then the full sets.
    common_sizes = [n for n in curve_sizes if all(n in s for s in split_sizes)]
    full_size = float(np.mean([s[-1] for s in split_sizes]))
    curve = {"sizes": common_sizes + [full_size],
             "size_names": [str(n) for n in common_sizes] + ["all"]}
    for init in inits:
        curve[init] = [_summary(accuracies[init][n]) for n in common_sizes + ["all"]]
    headline = results[PRETRAINED]["split_accuracy"]
    metrics = {
        "evaluation": description,
        "folds": folds,
        "splits": [name for name, _, _ in splits],
        "class_names": list(labels),
        "accuracy": headline["mean"],
        "accuracy_std": headline["std"],
        "examples": results[PRETRAINED]["examples"],
        PRETRAINED: results[PRETRAINED],
        SCRATCH: results.get(SCRATCH),
        "pretrained_minus_scratch": (headline["mean"] - results[SCRATCH]["split_accuracy"]["mean"]
                                     if SCRATCH in results else None),
        "learning_curve": curve,
        "exported_model": {"trained_on": "every example" if folds else "the training set",
                           "best_epoch": kept_best + 1, "epochs_run": len(kept_history["loss"]),
                           "history": kept_history},
    }
    outputs.write_json(outputs.join(output_dir, schema.METRICS_FILE), metrics)
    summary = f"accuracy {headline['mean']:.4f} +- {headline['std']:.4f} ({description})"
    if SCRATCH in results:
        summary += f"; scratch {results[SCRATCH]['split_accuracy']['mean']:.4f}"
    print(f"sentiment: {summary}", flush=True)
    plot_size_curve(curve, outputs.join(output_dir, schema.SIZE_CURVE_PLOT),
                    title=f"Accuracy against training-set size ({description})")
    plots.plot_learning_curves(kept_history, outputs.join(output_dir, schema.TRAINING_CURVES_PLOT),
                                best_epoch=kept_best, title="Exported model: learning curves")
    plots.plot_confusion_matrix(
        results[PRETRAINED]["confusion_matrix"], labels,
        outputs.join(output_dir, schema.CONFUSION_MATRIX_PLOT),
        title=f"Pretrained, pooled over {description}: accuracy {results[PRETRAINED]['accuracy']:.4f}")
    return {
        "evaluation": description,
        "parameters": num_params,
        "trainable_parameters": trainable,
        "train_examples": largest,
        "examples_per_parameter": ratio,
        "parameter_warning": warning,
        "accuracy": headline["mean"],
        "accuracy_std": headline["std"],
        "scratch_accuracy": results[SCRATCH]["split_accuracy"]["mean"] if SCRATCH in results else None,
        "learning_curve": {init: dict(zip(curve["size_names"], [p["mean"] for p in curve[init]]))
                           for init in inits},
        "exported_best_epoch": kept_best + 1,
        "exported_epochs_run": len(kept_history["loss"]),
        "seconds": round(time.time() - started, 2),
    }
