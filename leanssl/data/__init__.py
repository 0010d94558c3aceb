"""Data: a SPEC string opened into a :class:`~leanssl.data.dataset.Dataset` whose image arrays are
read-only ``np.memmap`` views of a decode-once cache (uint8, N x C x R x R), augmented later on the
device, in batch.

SPECs (``leanssl.data.sources.open_dataset``), one reader module per format in ``formats/``:

    digits                 scikit-learn's 8x8 digits (1 channel, default 16 px)
    fashion-mnist[:PATH]   IDX files, gzipped or not (1 channel, default 28 px)
    mnist:PATH             same
    cifar10:PATH           python pickle batches (default 32 px)
    cifar100:PATH          same, fine labels
    stl10:PATH             binary files; pretrain = train + unlabeled (default 96 px)
    folder:PATH or PATH    image folder, any nesting (3 channels, default: the images' median
                           shorter side, at most 64 px)
    npz:PATH               arrays x[, y][, x_test, y_test] (default: native size)

Every cache entry has the same layout: ``pretrain_x`` holds the labeled training images first
and then any extra unlabeled images (STL-10's unlabeled set, a folder's ``unlabeled/``), so the
train split is a slice of it and nothing is stored twice; ``train_y``, ``test_x``, ``test_y``.

Modules: ``sources`` (open a SPEC), ``dataset`` (Dataset, Split, Source), ``formats/`` (the
readers and their table), ``arrays`` (writing arrays into an entry, channel statistics),
``images`` (decoding image files, skipped-file accounting), ``subsets`` (stratified subsets, the
held-out 80/20 split), ``paths``, ``cache`` (the entry store), ``loader`` and ``augment``.

Adding a format: write ``formats/NAME.py`` with ``locate(path) -> Source``, where the Source's
fields identify the files' current contents (they are the cache key) and its ``build(writer, res,
strict, progress)`` fills the entry, usually with ``arrays.write_arrays``; then add one line to
``READERS`` in ``formats/__init__.py``. The spec ``NAME:PATH``, its error messages and the cache
follow from that; list it above.
"""
