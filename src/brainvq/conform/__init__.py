"""Scans of any scanner and orientation in a run's space: the OASIS layout's geometry (``geometry``), the
training data's mean slice stack (``template``), registration (``registration``), intensity matching
(``intensity``), the ``conform`` command (``scans``) and maps written back to a scan's own grid
(``mapback``)."""
