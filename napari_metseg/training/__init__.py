"""Training: lesion censoring (``censoring``), settings (``config``), datasets
(``datasets``), the DDP-ready loop (``loop``) and its process-group helpers
(``distributed``). The main names are re-exported by :mod:`napari_metseg`.
"""
