"""Data: Kinetics600 and ImageNet readers, embedded datasets, grain pipelines, array_record prep.

    kinetics.py   folder index (cached), clip sampling, decord decoding, crop / flip
    images.py     ImageNet via tfds.data_source, image folders, ADM centre crop
    synthetic.py  moving digits (MP4, Kinetics layout, positions saved) and digit PNGs
    pipeline.py   grain pipelines: make_train_iterator / make_eval_iterator, LoaderStats
    prepare.py    `sid2video prepare`: folders -> TFDS array_record datasets
    video_io.py   decord reading and ffmpeg (imageio-ffmpeg) writing

Submodules are imported on use; importing this package is cheap.
"""
