"""The application: the assembly of a daemon from a config, the command line and the demo."""

import os

# Before numpy loads OpenBLAS (the command line imports it through the assembly): a daemon
# decides on one worker thread, and BLAS threads beside it would only spin on a gateway's
# other cores; with one, a turbine's denoised rows are also the same bits whatever other
# turbines share its round (a multi-threaded product splits the work by its size).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
