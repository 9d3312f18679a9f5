__version__ = "0.1.0"
# The trace format's version, every record's "v" (docs/trace-format.md); here, with nothing
# imported, so that reading a trace never imports multiprocessing.
FORMAT_VERSION = 1
