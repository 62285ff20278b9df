"""The Open Inference Protocol ("V2", as KServe, Triton and Seldon speak it): its tensors and
the REST encoding with the binary tensor data extension (``rest.py``), and how a v1 entry
script's inference-schema signature maps onto named, typed tensors (``signature.py``).

Pure data conversion, no sockets: the replica decodes with it, and the tests hold it to what
``tritonclient`` sends and reads. numpy is imported by the modules that need it, so the
router, which only routes V2 paths, never loads it.
"""
