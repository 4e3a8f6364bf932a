"""The plumbing under the VAE: what every script needs and none of the VAE's story tells.

One job per file, the lower ones first (each imports only those above it in this list):
    errors.py        the errors that explain themselves, and require()
    atomic_files.py  files written whole or not at all
    arrays.py        .npz files, the local copies of Keras datasets, and their checks
    image_files.py   image files on disk: listing, decoding, the one preprocessing
    inspection_folders.py  an inspection set in the MVTec AD layout, with its defect masks
    batches.py       every pipeline that feeds fit(), streamed ones included
    run_folder.py    what a run folder holds, and the check of out_dir before a run writes
    model_size.py    the model's layer sizes, parameters and FLOPs from the image shape alone
    devices.py       data-parallel training across devices, and what a replica does differently
    schedules.py     the warm-up/stable/decay learning rate Keras lacks, and the KL warm-up
    optimizer.py     the optimizer and its learning-rate schedule
    precision.py     precision=auto: the floating-point policy the hardware runs natively
    stopping.py      how a run stops: NaN, Ctrl-C, SIGTERM, and what it says then
    recording.py     what a run records: backup, history, epoch times, TensorBoard
    command_line.py  --key=value settings, --help, their rules, RUN_DIR, one paragraph per error
    train_config.py  train.py's settings read and checked against their rules
    training_run.py  train.py's run around its recipe: devices, out_dir, checks, how it ends
    web_server.py    the local web server under explore.py
"""
