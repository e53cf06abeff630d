"""Data: Kinetics600 and ImageNet readers, embedded datasets, grain pipelines, array_record prep.

    kinetics.py         Kinetics-layout folders: labels, the cached index, FolderClipSource
    clip_decoder.py     clip sampling (ClipSpec), decord decoding, crop / flip, decoded-video cache
    images.py           ImageNet via tfds.data_source, image folders, ADM centre crop
    synthetic.py        moving digits (MP4, Kinetics layout, positions saved) and digit PNGs, and
                        their `sid2video prepare moving_digits / digit_images` subcommands
    sources.py          config.data -> a Source (reader + decoder) per dataset; the eval split
    pipeline.py         grain pipelines: make_train_iterator / make_eval_iterator
    batching.py         grain batching that drops and counts undecodable records; LoaderStats
    skips.py            skipped files, logged once per process
    prepared.py         reading prepared array_record datasets (PreparedSource, index, find)
    tfds_writer.py      the resumable sharded array_record writer
    convert_videos.py   Kinetics-layout folders -> array_record (MP4 bytes per video)
    convert_images.py   `<split>/<class>/<image>` folders -> array_record (ImageNet's features)
    prepare.py          the `sid2video prepare` command
    files.py            atomic JSON, temporary names, the completion marker of written datasets
    video_io.py         decord reading and ffmpeg (imageio-ffmpeg) writing

Submodules are imported on use; importing this package is cheap.
"""
