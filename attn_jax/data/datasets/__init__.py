"""One module per dataset: where its examples come from and how they are split.

  fashion_mnist   Fashion-MNIST from the original IDX files (tfds builder `fashion_mnist_idx`)
  digits          scikit-learn's 8x8 digits, stratified 80/20 (tfds builder `digits_sklearn`)
  image_records   what the offline image builders share: features, examples, channel stats
  dates           CLDR-written dates -> ISO 8601 (seq2seq, generated offline)
  gettext         the system's gettext catalogues: English UI strings -> X (seq2seq, offline)
  stdlib          the Python standard library's source, split by file (LM, offline)
  scenes          canvases of Fashion-MNIST or digits items with boxes and captions (captioning,
                  detection; generated offline from (seed, split, index))
  tfds_text       WMT14 En-De and lm1b read through `tfds.data_source` (prepared once)

Batching is not here: see `attn_jax.data.batcher` and its users (`pipeline`, `seq2seq`,
`lm_windows`).
"""
