"""Writing output files safely: every artifact of a command committed together, never through a
link or a device, never half written, a model and its data file switched as one.

Every file a command writes (the model, its external data file, the JSON, HTML and CSV reports,
plots) goes through an `OutputSet`::

    with OutputSet(protect=[input_model, *input_data_files]) as out:
        data = out.add_data(model_path, stream_tensors)       # streamed, hashed, fsynced
        out.add_model(model_path, proto_bytes(location=data.name), data)
        validate(out.temp_path(model_path))                   # the staged pair, final names
        out.add_text(report_path, json_text)
    # leaving the block commits; an exception (or Ctrl-C, SIGTERM) replaces nothing

**Targets.** A target must be a regular file or not exist. A symbolic link (even to a regular
file; `/proc/self/fd/N` and `/dev/stdout` are links), a FIFO, a device node (`/dev/null`), a
socket or a folder is refused with a one-line `UserError` before anything is written, and so is
a path ending in a separator (`newdir/`), `-`, a target in a missing, non-folder, read-only or
unwritable folder, two targets of one set that are the same file (relative paths, symlinked
folders, hard links) and a target that is one of the `protect`ed paths (the input model and its
data files). Nothing is ever written through an existing path: files are created in a staging
folder and renamed over the target, which replaces the name and never follows it.

**No stdout, no devices.** The writer never writes to standard output or to a device: `-o -`
and `-o /dev/stdout` are refused like any link or device. Output meant for a pipe is the
command's business (`--json` prints the report on stdout); a model or report file is always a
regular file that is complete once it exists.

**Staging.** Each set stages its files in one hidden folder per target folder,
`.graphprune-XXXXXXXX.tmp` (created like `mkdtemp`: exclusive, mode 0700), inside the target
folder, so the final rename stays on one file system. Staged files have their final names
inside it (created with O_EXCL | O_NOFOLLOW, mode 0666 minus the umask) and are fsynced when
written, so a staged model resolves its staged data file by its final name and can be validated
as it will be read. Commit renames everything into place only when every file is written; if
anything fails first, nothing is replaced and the staging folder is removed: on an exception,
on Ctrl-C (KeyboardInterrupt) and on SIGTERM/SIGHUP once `install_signal_handlers()` has turned
them into a `Terminated` exception. The commit itself (renames and fsyncs, milliseconds) runs
with SIGINT, SIGTERM and SIGHUP deferred, and the signal is delivered once it is done, so a
signal never splits a commit: it lands before it (nothing replaced) or after it (all replaced).
A process created with `os.fork` never runs its parent's cleanup or commit: an `OutputSet`
acts only in the process that made it, and the SIGTERM handler is reset in forked children.

**Model and data file.** The data file of a model is named after its content:
`<model file name>.<first 16 hex digits of its SHA-256>.data` (`o.onnx.3f2a…e1.data`), computed
while it streams. The same model therefore gets byte-identical files in any folder, on every
run, and a new data file never takes the name of the one the previous model reads unless their
bytes are the same. Commit renames the data file first, then the model (which references it),
then removes the previous model's data file. A reader sees, at every instant and even after a
SIGKILL between any two steps, either the old complete pair or the new complete pair; files
are fsynced before they are renamed and the folder after each rename, so the order also holds
on disk after a crash of the machine. What is removed after the
switch: files beside the model named `<model name>.data` (the fixed name of older versions) or
`<model name>.<16 hex>.data` that the new model does not use and that are not protected. A
reader that has already opened the old data file keeps reading it (POSIX unlink); one that read
the old model and opens its data file only after the switch finds it gone.

**Concurrency.** Two processes writing the same output stage in their own folders; commits into
a folder are serialized by an advisory `flock` on the folder itself (no lock file is left
behind), held only while a staging folder is created and while a set commits. The last commit
wins, and it is a complete pair: the loser's data file is removed by the winner like any
previous one. Each staging folder is flocked by its process while it lives, so a later write
into the same folder removes staging folders left by a killed process (SIGKILL) and the data
file such a kill may leave unreferenced between the two renames, and never one in use. Where
`flock` is not available (no `fcntl`; NFS, where it cannot lock a folder), writes stay atomic
and never mix pairs, but stale staging folders and old data files are left in place.

**Errors.** Missing, read-only or unwritable folders, disk full (ENOSPC, EDQUOT), I/O errors
and permission errors while writing are one-line `UserError`s, raised with nothing replaced.
"""
from __future__ import annotations

from .outputs import DataFile, OutputSet, atomic_write_bytes, atomic_write_text
from .signals import Terminated, install_signal_handlers
from .steps import set_step_hook
from .targets import STAGE_PREFIX, STAGE_SUFFIX, check_target, check_targets, data_file_name

__all__ = ["OutputSet", "DataFile", "Terminated", "install_signal_handlers", "check_target",
           "check_targets", "atomic_write_bytes", "atomic_write_text", "data_file_name",
           "set_step_hook", "STAGE_PREFIX", "STAGE_SUFFIX"]
