"""Training: lesion censoring (``censoring``), settings (``config``), datasets
(``datasets``) and slice draws (``sampling``), the DDP-ready loop (``loop``) with
its run state (``run``), steps (``steps``) and files (``records``), scoring through
the engine (``evaluation``) and the process-group helpers (``distributed``). The
main names are re-exported by :mod:`napari_metseg`.
"""
