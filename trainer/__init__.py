"""TensorFlow trainers: skip-gram embeddings, the digit MLP, the sentiment classifier."""
