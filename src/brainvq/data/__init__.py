"""Data: the OASIS slice layout and plain PNG folders (``layout``), reading slices (``images``), datasets
(``dataset``), ``check-data`` (``checks``), volumes (``volumes``) cut into the layout (``slicing``), and the
synthetic phantom (``phantom``). Import from the module that owns a name."""
