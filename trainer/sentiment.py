"""Sentiment classifier: averaged pretrained word embeddings + dense layers (Keras 3).

Reads the examples of the sentiment job (`jobs/sentiment.py` documents the
directory). `SentimentConfig` declares the model and training parameters once (their
flags, defaults and checks). The model (`build_model`):

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

With `adapt_epochs`, the pretrained models of each evaluation unit start from the vectors
trained further on that unit's training texts, without their labels (`trainer.adapt`:
skip-gram on the texts, as the trainer learned the vectors on the corpus). Every size of
the unit's learning curve starts from the same adapted vectors: they saw the unit's
unlabelled texts, as a semi-supervised learner would, and never its held-out texts.

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
Every training set and every held-out set must hold every class (`check_units`).

`train` runs the steps: `make_splits` -> `check_units` -> `report_budget` ->
`score_units` (`unit_vectors`, then `fit` and `predict` per unit, init and size) -> export -> `summarize`
-> `write_metrics`.
"""

import hashlib
import logging
import time
import typing

import keras  # Keras 3, explicitly: tf.keras may be Keras 2 (see TF_USE_LEGACY_KERAS)
import numpy as np
import tensorflow as tf

from core import outputs, plots, tokens
from core.params import Params, param
from schemas import embeddings as embeddings_schema
from schemas import sentiment as schema
from trainer import adapt, common

PRETRAINED = "pretrained"
SCRATCH = "scratch"
_SCRATCH_INIT = 0.05  # scratch embeddings: uniform in +-this (Keras's default)


class SentimentConfig(Params):
    """The classifier and its training: the training flags of `embedflow sentiment`."""

    hidden: int = param(64, ge=1, help="units of the hidden layer")
    hidden_layers: int = param(1, ge=0, help="number of hidden layers of --hidden units")
    fine_tune: bool = param(True, flag="--fine-tune", negate="--freeze", group="tuning",
                            help="keep the pretrained embeddings fixed (they are fine-tuned "
                                 "with the rest unless this is given)")
    dropout: float = param(0.5, ge=0, lt=1, help="dropout before each dense layer while training")
    word_dropout: float = param(0.5, ge=0, lt=1,
                                help="share of tokens dropped from each text while training")
    epochs: int = param(40, ge=1, help="most epochs")
    batch_size: int = param(64, ge=1, help="batch size")
    learning_rate: float = param(2e-3, gt=0, help="Adam learning rate")
    patience: int = param(4, ge=0,
                          help="stop after this many epochs without a lower validation loss")
    min_epochs: int = param(0, ge=0,
                            help="train at least this many epochs before early stopping watches "
                                 "the validation loss (slowly fine-tuned rows need a few)")
    min_epoch_batches: int = param(50, ge=1,
                                   help="an epoch is a pass over the training set or this many "
                                        "batches, whichever is more")
    validation_fraction: float = param(0.1, gt=0, lt=1,
                                       help="share of each training set kept aside for early "
                                            "stopping")
    normalize: bool = param(True, negate="--raw-vectors",
                            help="use the trained vectors as they are, not scaled to unit length")
    standardize: bool = param(True, negate="--no-standardize",
                              help="feed the mean vector to the dense layers as it is, not "
                                   "batch-normalised")
    fine_tune_rate: float = param(0.1, gt=0,
                                  help="learning rate of the fine-tuned pretrained embeddings, "
                                       "relative to the rest (scratch embeddings, with nothing "
                                       "to keep, train at the full rate)")
    adapt_epochs: int = param(0, ge=0,
                              help="before the pretrained models train, continue skip-gram training "
                                   "of the vectors for this many epochs on the training texts, "
                                   "without their labels (0: use them as trained)")
    seed: int = param(0, ge=0, help="seed of weights, dropout and shuffling")


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


class LazyAdam(keras.optimizers.Optimizer):
    """Adam whose sparse (embedding) updates touch only the rows in the batch, at
    `sparse_scale` times the learning rate.

    Dense Adam updates every row of a 76,000 x 100 table at every step (decaying the
    moments of rows the batch never saw); here the moments and the update of a row change
    only when a batch holds it, so a step costs what the batch costs. Dense gradients get
    plain Adam (the same arithmetic as `keras.optimizers.Adam`).

    The moments are this optimizer's own slots, made in `build` through Keras's public
    `add_variable_from_reference` and found again by the variable's `ref()` (the public
    way to key a dict by a TensorFlow variable), so nothing reads Keras internals.
    TensorFlow backend, without a tf.distribute strategy (it updates through
    tf.IndexedSlices, and a replica's variable is not the one the slots were made for).
    """

    def __init__(self, learning_rate=1e-3, *, sparse_scale=1.0, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.sparse_scale = float(sparse_scale)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self._slots = {}

    def get_config(self):
        return {**super().get_config(), "sparse_scale": self.sparse_scale, "beta_1": self.beta_1,
                "beta_2": self.beta_2, "epsilon": self.epsilon}

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for variable in var_list:
            self._slots[_variable_key(variable)] = (
                self.add_variable_from_reference(variable, name="momentum"),
                self.add_variable_from_reference(variable, name="velocity"))

    def update_step(self, gradient, variable, learning_rate):
        key = _variable_key(variable)
        if key not in self._slots:
            raise ValueError(f"LazyAdam: {variable.name} is not a variable it was built for "
                             "(under a tf.distribute strategy it is not supported)")
        m, v = self._slots[key]
        step = tf.cast(self.iterations + 1, variable.dtype)
        alpha = (tf.cast(learning_rate, variable.dtype) * tf.sqrt(1 - self.beta_2 ** step)
                 / (1 - self.beta_1 ** step))
        if isinstance(gradient, tf.IndexedSlices):
            rows, position = tf.unique(gradient.indices)
            grad = tf.math.unsorted_segment_sum(tf.cast(gradient.values, variable.dtype), position,
                                                tf.shape(rows)[0])
            m_old, v_old = tf.gather(m.value, rows), tf.gather(v.value, rows)
            alpha *= self.sparse_scale
            sliced = lambda values: tf.IndexedSlices(values, rows)  # noqa: E731
        else:
            grad, m_old, v_old = tf.cast(gradient, variable.dtype), m.value, v.value
            sliced = lambda values: values  # noqa: E731
        m_new = self.beta_1 * m_old + (1 - self.beta_1) * grad
        v_new = self.beta_2 * v_old + (1 - self.beta_2) * tf.square(grad)
        self.assign(m, sliced(m_new))
        self.assign(v, sliced(v_new))
        self.assign_sub(variable, sliced(alpha * m_new / (tf.sqrt(v_new) + self.epsilon)))


def _variable_key(variable):
    """A dict key of a model variable, a Keras one or the tf.Variable it holds."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.ref()


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
      Trained: the model with the best epoch's weights, its history, the best epoch.
    """
    seed = derive_seed(config.seed, *seed_parts)
    keras.utils.set_random_seed(seed)
    initial = None
    if pretrained:
        initial = unit_rows(vectors) if config.normalize else vectors
    model = build_model(config.model_copy(update={"seed": seed % 100_000}), vocab_size=vectors.shape[0],
                        dim=vectors.shape[1], num_classes=num_classes, vectors=initial)
    fit_at, validation_at = split_validation(examples, config.validation_fraction)
    train_data = make_dataset(examples.take(fit_at), batch_size=config.batch_size, shuffle_seed=seed,
                              repeat=True)
    # A few hundred examples make an epoch of a few batches: patience counted in such
    # epochs would stop training before it learned anything.
    batches = max(-(-len(fit_at) // config.batch_size), config.min_epoch_batches)
    validation_data = make_dataset(examples.take(validation_at), batch_size=1024)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                            restore_best_weights=True,
                                            start_from_epoch=config.min_epochs)
    history = model.fit(train_data, validation_data=validation_data, epochs=config.epochs,
                        steps_per_epoch=batches,
                        callbacks=[stopper], shuffle=False, verbose=0)  # shuffled above
    history = {k: [float(v) for v in values] for k, values in history.history.items()}
    return Trained(model, history, int(stopper.best_epoch))


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


def plot_size_curve(curve, path, title, adaptation=None):
    """Writes a PNG of accuracy against training-set size (log scale), one line per init
    (the pretrained line says how its vectors were adapted, with --adapt-epochs)."""
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    figure = Figure(figsize=(6.5, 4.5))
    ax = figure.add_subplot()
    sizes = np.asarray(curve["sizes"], np.float64)
    for init in (PRETRAINED, SCRATCH):
        if curve.get(init) is None:
            continue
        mean = np.array([p["mean"] for p in curve[init]])
        std = np.array([p["std"] for p in curve[init]])
        units = len(curve[init][0].get("values", [])) or 1
        adapted = f", adapted {adaptation['epochs']} epochs" if adaptation and init == PRETRAINED else ""
        ax.errorbar(sizes, mean, yerr=std, marker="o", capsize=4,
                    label=f"{init} embeddings{adapted} (mean +- std over {units})")
        ax.fill_between(sizes, mean - std, mean + std, alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("training examples")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
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


class Data(typing.NamedTuple):
    """What `train` learns from."""
    examples: Examples  # the --input examples
    eval_examples: typing.Optional[Examples]  # the --eval-input examples, or None
    vectors: np.ndarray  # the trained vectors, float32 [vocab_size, dim]
    labels: tuple  # class names, in class-index order
    counts: typing.Optional[np.ndarray] = None  # corpus count of each id (for --adapt-epochs)


class Evaluation(typing.NamedTuple):
    """How `train` judges the model (the job's --folds, --eval-fraction, ... flags)."""
    folds: typing.Optional[int]  # K-fold cross-validation over the examples, or None
    eval_fraction: typing.Optional[float]  # held-out share without folds and eval examples
    compare_scratch: bool  # also train from random embeddings
    curve_sizes: tuple  # training-set sizes of the learning curve (the full set is added)

    @property
    def inits(self):
        return (PRETRAINED, SCRATCH) if self.compare_scratch else (PRETRAINED,)


class Trained(typing.NamedTuple):
    model: keras.Model  # with the best epoch's weights
    history: dict  # Keras history: lists per metric
    best_epoch: int  # 0-based


def train(config, data, evaluation, *, corpus_dir, output_dir):
    """Evaluates (folds or a held-out set, learning curve), exports a model into `output_dir`.

    Args:
      config: SentimentConfig.
      data: Data.
      evaluation: Evaluation.
      corpus_dir: the corpus job output (its transform_fn goes into the SavedModel).
      output_dir: where the model, metrics.json and plots go.

    Returns:
      dict for info.json.

    Raises:
      ValueError: labels outside the classes; a training or evaluation set without a
        class (see `check_units`).
    """
    started = time.time()
    num_classes = len(data.labels)
    pool, units, description = make_splits(data.examples, data.eval_examples, evaluation.folds,
                                           evaluation.eval_fraction)
    bad = sorted({int(l) for l in pool.labels if not 0 <= l < num_classes})
    if bad:
        raise ValueError(f"examples hold labels {bad} outside the {num_classes} classes")
    check_units(pool, units, data.labels, description)
    budget = report_budget(config, data, units, description)
    scores = score_units(config, data, pool, units, evaluation)
    if evaluation.folds:
        # Every example was tested once; the exported model learns from all of them.
        scores.kept = fit(config, pool, vectors=unit_vectors(config, data, pool, "all", scores),
                          pretrained=True, num_classes=num_classes, seed_parts=("all",))
    export_model(scores.kept.model, corpus_dir, data.labels,
                 outputs.join(output_dir, schema.MODEL_DIR))
    metrics = summarize(scores, pool, evaluation, data.labels, description)
    write_metrics(metrics, output_dir)
    curve = metrics["learning_curve"]
    return {
        "evaluation": description,
        **budget,
        "accuracy": metrics["accuracy"],
        "accuracy_std": metrics["accuracy_std"],
        "scratch_accuracy": (metrics[SCRATCH]["split_accuracy"]["mean"]
                             if metrics[SCRATCH] else None),
        "learning_curve": {init: dict(zip(curve["size_names"], [p["mean"] for p in curve[init]]))
                           for init in evaluation.inits},
        "adaptation": scores.adaptation,
        "exported_best_epoch": scores.kept.best_epoch + 1,
        "exported_epochs_run": len(scores.kept.history["loss"]),
        "seconds": round(time.time() - started, 2),
    }


def check_units(pool, units, labels, description):
    """Refuses a training or held-out set without every class; warns of imbalance.

    A fold's test set may lack a class (a warning): with folds, every example is tested
    once and the pooled metrics see every class the training sets hold.
    """
    named_by = f"--labels {','.join(labels)}"
    folds = len(units) > 1
    for name, train_at, test_at in units:
        train_where, test_where = ((f"the training set of {name}", f"the test set of {name}")
                                   if folds else ("the training set", f"the {description}"))
        for where, at, required in ((train_where, train_at, True), (test_where, test_at, not folds)):
            common.check_classes(np.bincount(pool.labels[at], minlength=len(labels)), labels, where,
                                 named_by=named_by, required=required)


def report_budget(config, data, units, description):
    """Prints the parameter budget of the largest training set; returns it for info.json."""
    probe = build_model(config, vocab_size=data.vectors.shape[0], dim=data.vectors.shape[1],
                        num_classes=len(data.labels), vectors=data.vectors)
    num_params, trainable = common.count_params(probe), trainable_params(probe)
    del probe
    largest = max(len(train_at) for _, train_at, _ in units)
    ratio, budget, warning = common.parameter_budget(trainable, largest)
    print(f"sentiment: {description}; {num_params:,} parameters, trainable: {budget}", flush=True)
    if warning:
        print(f"sentiment: WARNING: {warning}", flush=True)
        logging.warning("sentiment: %s", warning)
    return {"parameters": num_params, "trainable_parameters": trainable, "train_examples": largest,
            "examples_per_parameter": ratio, "parameter_warning": warning}


class Scores:
    """What the evaluation units gave, filled by `score_units`."""

    def __init__(self, inits, pool_size, num_classes):
        self.accuracies = {init: {} for init in inits}  # init -> size or "all" -> [per unit]
        # Out-of-unit probabilities of the full-size models, by pool position.
        self.predicted = {init: np.zeros((pool_size, num_classes), np.float32) for init in inits}
        self.tested = np.zeros(pool_size, bool)
        self.unit_names = []
        self.unit_sizes = []  # per unit, its training-set sizes
        self.kept = None  # Trained: the model to export
        self.adaptation = None  # --adapt-epochs: what adapting the vectors took (info.json)


def unit_vectors(config, data, train_set, name, scores=None):
    """The vectors the pretrained models of a unit start from: `data.vectors`, or with
    --adapt-epochs those vectors trained further on the unit's training texts (all of them,
    unlabelled; the learning curve's smaller sets start from the same vectors). Held-out
    texts never reach them. The time it took is added to `scores.adaptation`, if given."""
    if not config.adapt_epochs:
        return data.vectors
    if data.counts is None:
        raise ValueError("--adapt-epochs needs the corpus counts of the vectors' vocabulary")
    started = time.time()
    vectors = adapt.adapt_vectors(data.vectors, data.counts, train_set.ids, epochs=config.adapt_epochs,
                                  seed=derive_seed(config.seed, "adapt", name))
    seconds = time.time() - started
    print(f"sentiment: {name}: vectors adapted to its {len(train_set):,} training texts "
          f"({config.adapt_epochs} epochs, {seconds:.1f} s)", flush=True)
    if scores is not None:
        done = scores.adaptation or {"epochs": config.adapt_epochs, "units": 0, "seconds": 0.0}
        scores.adaptation = {**done, "units": done["units"] + 1, "seconds": round(done["seconds"] + seconds, 2)}
    return vectors


def score_units(config, data, pool, units, evaluation):
    """Trains and tests every (unit, init, training-set size). Returns Scores."""
    scores = Scores(evaluation.inits, len(pool), len(data.labels))
    for name, train_at, test_at in units:
        train_set, test_set = pool.take(train_at), pool.take(test_at)
        order = curve_order(train_set.keys)
        sizes = [n for n in evaluation.curve_sizes if n < len(train_set)] + [len(train_set)]
        scores.unit_names.append(name)
        scores.unit_sizes.append(sizes)
        scores.tested[test_at] = True
        vectors = unit_vectors(config, data, train_set, name, scores)
        for n in sizes:
            subset = train_set.take(order[:n])
            full = n == len(train_set)
            for init in evaluation.inits:
                trained = fit(config, subset, vectors=vectors, pretrained=init == PRETRAINED,
                              num_classes=len(data.labels), seed_parts=(name, n))
                probabilities = predict(trained.model, test_set)
                accuracy = _accuracy(probabilities, test_set.labels)
                scores.accuracies[init].setdefault("all" if full else n, []).append(accuracy)
                print(f"sentiment: {name}: {init} embeddings, {n:,} training examples: accuracy "
                      f"{accuracy:.4f} (epoch {trained.best_epoch + 1} of "
                      f"{len(trained.history['loss'])})", flush=True)
                if full:
                    scores.predicted[init][test_at] = probabilities
                    if init == PRETRAINED and not evaluation.folds:
                        scores.kept = trained
                keras.backend.clear_session(free_memory=False)
    return scores


def summarize(scores, pool, evaluation, labels, description):
    """metrics.json of the scores (see jobs/sentiment.py)."""
    truth = pool.labels[scores.tested]
    results = {}
    for init in evaluation.inits:
        pooled = common.classification_metrics(
            truth, scores.predicted[init][scores.tested].argmax(axis=1), len(labels))
        results[init] = {**pooled, "split_accuracy": _summary(scores.accuracies[init]["all"])}
    # The curve's x: the sizes asked for that every unit could give, then the full sets.
    common_sizes = [n for n in evaluation.curve_sizes if all(n in s for s in scores.unit_sizes)]
    curve = {"sizes": common_sizes + [float(np.mean([s[-1] for s in scores.unit_sizes]))],
             "size_names": [str(n) for n in common_sizes] + ["all"]}
    for init in evaluation.inits:
        curve[init] = [_summary(scores.accuracies[init][n]) for n in common_sizes + ["all"]]
    headline = results[PRETRAINED]["split_accuracy"]
    return {
        "evaluation": description,
        "folds": evaluation.folds,
        "splits": scores.unit_names,
        "class_names": list(labels),
        "accuracy": headline["mean"],
        "accuracy_std": headline["std"],
        "examples": results[PRETRAINED]["examples"],
        PRETRAINED: results[PRETRAINED],
        SCRATCH: results.get(SCRATCH),
        "pretrained_minus_scratch": (headline["mean"] - results[SCRATCH]["split_accuracy"]["mean"]
                                     if SCRATCH in results else None),
        "learning_curve": curve,
        # --adapt-epochs: the pretrained models' vectors were trained further on each
        # unit's training texts (unlabelled) first; None: used as trained.
        "adaptation": scores.adaptation,
        "exported_model": {"trained_on": "every example" if evaluation.folds else "the training set",
                           "best_epoch": scores.kept.best_epoch + 1,
                           "epochs_run": len(scores.kept.history["loss"]),
                           "history": scores.kept.history},
    }


def write_metrics(metrics, output_dir):
    """Writes metrics.json and the plots; prints the headline."""
    outputs.write_json(outputs.join(output_dir, schema.METRICS_FILE), metrics)
    description, pretrained = metrics["evaluation"], metrics[PRETRAINED]
    summary = f"accuracy {metrics['accuracy']:.4f} +- {metrics['accuracy_std']:.4f} ({description})"
    if metrics[SCRATCH]:
        summary += f"; scratch {metrics[SCRATCH]['split_accuracy']['mean']:.4f}"
    print(f"sentiment: {summary}", flush=True)
    exported = metrics["exported_model"]
    plot_size_curve(metrics["learning_curve"], outputs.join(output_dir, schema.SIZE_CURVE_PLOT),
                    title=f"Accuracy against training-set size ({description})",
                    adaptation=metrics["adaptation"])
    plots.plot_learning_curves(exported["history"],
                               outputs.join(output_dir, schema.TRAINING_CURVES_PLOT),
                               best_epoch=exported["best_epoch"] - 1,
                               title="Exported model: learning curves")
    plots.plot_confusion_matrix(
        pretrained["confusion_matrix"], metrics["class_names"],
        outputs.join(output_dir, schema.CONFUSION_MATRIX_PLOT),
        title=f"Pretrained, pooled over {description}: accuracy {pretrained['accuracy']:.4f}")
